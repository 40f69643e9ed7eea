"""The thread-pool worker of `gateway serve --worker-class gthread`: one thread per request in progress."""

from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker

from shared.door import ContractErrors


class ThreadWorker(ContractErrors, _ThreadWorker):
    pass
