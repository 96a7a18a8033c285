"""The console's pages, one module per part of it: a Falcon resource per page, rendered from ``templates/``."""
