"""jobrelay's test mode: the API, the store and a worker in the calling process, with no server."""
