"""The gevent worker of `gateway serve` (the default): one greenlet per connection."""

import gevent
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

from shared.door import ContractErrors


class GeventWorker(ContractErrors, _GeventWorker):
    def handle_request(self, listener_name, req, sock, addr):
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            # Yield after each request: a keep-alive connection whose next request is already
            # there would otherwise be served again and again while the others wait (p99 of a
            # null endpoint with 8 connections: 106 ms without, see bench/bench_door.py).
            gevent.sleep(0)
