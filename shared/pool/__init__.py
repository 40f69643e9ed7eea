"""The pool of ComfyUI servers behind one queue that the gateway owns (in MySQL).

A job waits in the gateway queue until a server that can run it has a free
slot; a server only ever holds the few prompts it is about to run (``slots``).

* ``capabilities``: what each server offers (node classes, combo choices), read
  from its ``/object_info`` by the listener and stored on its backend row; what
  a job needs; whether a server can run it.
* ``queue``: the waiting jobs and their fair order.
* ``dispatch``: claim waiting jobs for servers with free slots (``SELECT ... FOR
  UPDATE SKIP LOCKED`` under locks on the backend rows, so no job is sent twice
  and no server gets more than its slots) and send them.
"""
