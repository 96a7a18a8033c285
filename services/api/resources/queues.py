"""``/v1/queues``: queue stats, pausing and resuming a queue, and the dead-letter queue of each queue.

A namespaced key reads, requeues and purges only its namespace's dead letters. Queues themselves
are shared by every namespace: their stats and pausing are the operator's (403 to a namespaced key).
"""

from __future__ import annotations

import falcon

from services.api.body import read_json
from services.api.middleware import namespace_of
from services.api.resources.jobs import parse_limit
from services.api.tenancy import job_view
from shared.broker.pausing import mirror_pause, mirror_resume
from shared.broker.queues import drop_dead_letters, queue_stats
from shared.catalog import QUEUE_NAME
from shared.errors import FieldError, InvalidInput, NotFound
from shared.job import rfc3339
from shared.store.jobs import JobFilter
from shared.store.pauses import QueuePauses
from shared.submission.submitter import Submitter

MAX_REQUEUE_IDS = 1000


def _check_queue(name: str) -> None:
    if not QUEUE_NAME.fullmatch(name):
        raise NotFound(f"no queue named {name!r}")


class QueuesResource:
    scopes = {"GET": "read"}

    def __init__(self, submitter: Submitter) -> None:
        self.submitter = submitter

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        queues = sorted({spec.queue for spec in self.submitter.registry.all().values()})
        stats = queue_stats(self.submitter.broker.client, self.submitter.store, queues)
        resp.media = {"items": [s.as_dict() for s in stats]}


class _QueueSwitch:
    """``POST /v1/queues/{name}/pause`` and ``/resume``: idempotent; the store first, then the Redis mirror.

    NOTE: a failed Redis write after the commit is not undone: the scheduler puts the mirror
    right from the store within seconds (``shared/broker/pausing.py``), and the client may retry.
    """

    scopes = {"POST": "admin"}

    def __init__(self, submitter: Submitter, pauses: QueuePauses) -> None:
        self.submitter = submitter
        self.pauses = pauses

    def _known(self, name: str) -> None:
        registry = self.submitter.registry
        if not registry.knows_queue(name):
            known = registry.queues()
            raise NotFound(f"no queue named {name!r}; the known queues: {', '.join(known) or 'none'}")


class QueuePauseResource(_QueueSwitch):
    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._known(name)
        key = getattr(req.context, "api_key", None)
        paused_at = self.pauses.pause(name, paused_by=key.name if key is not None else "")
        mirror_pause(self.submitter.broker.client, name)
        resp.media = {"name": name, "paused": True, "paused_at": rfc3339(paused_at)}


class QueueResumeResource(_QueueSwitch):
    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._known(name)
        self.pauses.resume(name)
        mirror_resume(self.submitter.broker.client, name)
        resp.media = {"name": name, "paused": False, "paused_at": None}


class DeadLettersResource:
    scopes = {"GET": "read", "DELETE": "admin"}
    namespaced = True

    def __init__(self, submitter: Submitter) -> None:
        self.submitter = submitter

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        _check_queue(name)
        errors: list[FieldError] = []
        for unknown in sorted(set(req.params) - {"limit", "cursor"}):
            errors.append(FieldError(f"/query/{unknown}", "is not a parameter of this list"))
        limit = parse_limit(req, errors)
        # An empty cursor (``cursor=``, which the document allows) is the first page, as no cursor is.
        cursor = req.params.get("cursor") or None
        if cursor is not None and not isinstance(cursor, str):
            errors.append(FieldError("/query/cursor", "give it once"))
        if errors:
            raise InvalidInput("the query is invalid", errors)
        try:
            page = self.submitter.store.page(
                JobFilter(queue=name, dead=True, namespace=namespace_of(req)),
                limit=limit,
                cursor=cursor,  # type: ignore[arg-type]
            )
        except InvalidInput as exc:
            raise InvalidInput(exc.detail, [FieldError("/query/cursor", exc.detail)]) from None
        resp.media = {
            "items": [job_view(req, job) for job in page.items],
            "next_cursor": page.next_cursor,
        }

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        _check_queue(name)
        store, client = self.submitter.store, self.submitter.broker.client
        namespace = namespace_of(req)
        if namespace is None:
            purged = store.purge_dead(name)
            drop_dead_letters(client, name)
        else:
            purged = 0
            while batch := store.dead_ids(name, limit=500, namespace=namespace):
                gone = store.purge_dead_ids(name, batch)
                drop_dead_letters(client, name, gone)
                purged += len(gone)
        resp.media = {"purged": purged}


class DeadRequeueResource:
    scopes = {"POST": "admin"}
    namespaced = True

    def __init__(self, submitter: Submitter) -> None:
        self.submitter = submitter

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        _check_queue(name)
        body = read_json(req, self.submitter.max_body_bytes)
        ids = self._ids(body)
        store = self.submitter.store
        namespace = namespace_of(req)
        requeued = 0
        if ids is None:
            while batch := store.dead_ids(name, limit=500, namespace=namespace):
                requeued += self._requeue(name, batch, namespace)
        else:
            requeued = self._requeue(name, ids, namespace)
        resp.status = falcon.HTTP_202
        resp.media = {"requeued": requeued}

    def _requeue(self, queue: str, ids: list[str], namespace: str | None) -> int:
        """Requeue those of ``ids`` that are dead letters of the queue (and of the key's namespace, if it has one)."""
        jobs = self.submitter.store.requeue(ids, queue=queue, dead_only=True, namespace=namespace)
        drop_dead_letters(self.submitter.broker.client, queue, [job.id for job in jobs])
        self.submitter.publish(jobs, new=False)
        return len(jobs)

    @staticmethod
    def _ids(body: object) -> list[str] | None:
        """The ids to requeue, or None for all."""
        if isinstance(body, dict) and body.keys() == {"all"} and body["all"] is True:
            return None
        if isinstance(body, dict) and set(body) == {"ids"} and isinstance(body["ids"], list):
            ids = body["ids"]
            bad = [i for i, value in enumerate(ids) if not isinstance(value, str) or len(value) > 36]
            if bad:
                raise InvalidInput("ids must be job ids", [FieldError(f"/ids/{i}", "is not a job id") for i in bad])
            if not 1 <= len(ids) <= MAX_REQUEUE_IDS:
                raise InvalidInput("too many or no ids", [FieldError("/ids", f"must hold 1 to {MAX_REQUEUE_IDS} ids")])
            return ids
        raise InvalidInput(
            'send {"ids": [...]} or {"all": true}', [FieldError("", 'must be {"ids": [...]} or {"all": true}')]
        )
