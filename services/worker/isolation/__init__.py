"""Process isolation: the jobs of an ``@task(isolation="process")`` task run in a child process.

A thread task shares its worker process with every job beside it: a segfault, an
``os.abort()``, the OOM killer or a loop that holds the GIL past its hard limit costs the
whole process. An isolated task's job runs in a long-lived child of its worker thread
(``pool.py``, the parent side; ``child.py``, the child's loop), so any of those costs only
that job: it is recorded by its task's retry policy with the signal named, the jobs beside
it go on, and a new child takes the thread's next isolated job.
"""
