"""The gevent worker of `gateway serve` (the default): one greenlet per connection."""

from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

from shared.door import ContractErrors


class GeventWorker(ContractErrors, _GeventWorker):
    pass
