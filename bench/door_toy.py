"""The reference endpoints of bench/bench_door.py, served by gunicorn with the same settings as `gateway serve`.

* ``GET /null``: Flask and nothing else (no I/O): the ceiling of the server itself.
* ``GET /toy/<id>``: the naive endpoint a status poll is measured against: one pymysql primary-key
  read of the job row (``SELECT *``, as a first version would write it) on a connection kept per
  thread (per greenlet under gevent), without a ping, rendered as JSON.

    BENCH_DATABASE_URL=mysql://... gunicorn -k gevent -w 2 bench.door_toy:app
"""

import json
import os
import threading

import pymysql
import pymysql.cursors
from flask import Flask, Response

from shared.config import DatabaseUrl

app = Flask(__name__)
_url = DatabaseUrl.parse(os.environ["BENCH_DATABASE_URL"])
_local = threading.local()


def _conn():
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = pymysql.connect(host=_url.host, port=_url.port, user=_url.user, password=_url.password,
                                             database=_url.database, charset="utf8mb4", autocommit=True,
                                             cursorclass=pymysql.cursors.DictCursor)
    return conn


@app.get("/null")
def null():
    return Response(b'{"ok":true}', content_type="application/json")


@app.get("/toy/<job_id>")
def toy(job_id):
    with _conn().cursor() as cur:
        cur.execute("SELECT * FROM jobs WHERE id=%s", (job_id,))
        row = cur.fetchone()
    if row is None:
        return Response(b'{"error":"not found"}', status=404, content_type="application/json")
    return Response(json.dumps({"job": row}, default=str), content_type="application/json")
