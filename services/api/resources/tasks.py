"""``/v1/tasks``: the catalog workers registered."""

from __future__ import annotations

import falcon

from shared.store.tasks import TaskRegistry

_SHOWN = (
    "name",
    "queue",
    "args_schema",
    "max_retries",
    "time_limit_s",
    "max_age_s",
    "priority",
    "description",
    "concurrency",
    "concurrency_key",
    "rate_limit",
    "rate_limit_key",
    "cancel_grace_s",
    "unique_for_s",
    "debounce_s",
    "isolation",
)


class TasksResource:
    scopes = {"GET": "read"}
    #: The catalog is every tenant's.
    namespaced = True

    def __init__(self, registry: TaskRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        items = []
        for spec in self.registry.all().values():
            data = spec.as_dict()
            items.append({name: data[name] for name in _SHOWN})
        resp.media = {"items": items}
