"""Workflow files: a ComfyUI graph plus the map of what an app may set in it.

A workflow is one JSON file, ``<name>.json`` (see the contract's section
"Workflow files" and ``workflows/README.md``)::

    {"title": "...", "description": "...", "timeout_s": 600,
     "graph": {<the graph exported with "Save (API)">},
     "params": {"seed": {"node": "3", "input": "seed", "type": "integer", ...}},
     "inputs": {"image": {"title": "Load Image", "input": "image", "required": true}},
     "price": {"per_job": 1, "per_image": 2}}

``load_workflow`` checks everything when the file is read, so that a typo
fails at start-up with a message naming the file and the problem instead of
at the first job. ``Workflow.fill`` validates an app's params and returns a
deep copy of the graph in which only the mapped inputs are set: everything
else in the graph is fixed, and a param value is always a scalar, so an app
can neither rewire the graph nor add a node.

Decisions beyond the contract:

- ``integer`` accepts JSON integers only: ``1.0`` is refused ("must be an
  integer"), as are ``true``/``false`` for numbers; strings are never coerced.
- A param sent as JSON ``null`` counts as omitted (mobile serializers emit
  ``null`` for unset optional fields).
- A param with neither ``required``, ``default`` nor ``random_default`` takes
  the value its (first) target holds in the graph as its default, so every
  param has a value in the job's stored params.
- ``multiple_of`` and ``random_default`` apply to integers only; the display
  name of a param is ``label`` because ``title`` names a node.
- Values for ``enum_from`` params are only checked when the ``choices``
  function knows the choices; otherwise ComfyUI judges them.

The package, by responsibility:

- ``specs``: the data types (``Workflow``, ``ParamSpec``, ``InputSpec``,
  ``Target``, ``Price``), ``WorkflowFileError`` and the format's constants.
- ``load``: reading workflow files (``load_workflow``, ``load_workflows``,
  ``load_price``): strict JSON, the file's shape and its graph.
- ``params``: parsing the ``params``, ``inputs`` and ``price`` sections.
- ``fill``: validating an app's params and filling them into a copy of the graph.
- ``choices``: combo choices from ComfyUI's ``/object_info``.
- ``values``: type checks and renderings of JSON values the others share.
"""

from shared.workflows.choices import choices_from_object_info
from shared.workflows.load import load_price, load_workflow, load_workflows
from shared.workflows.specs import (FIELD_RE, MAX_PRICE, NAME_RE, PRICE_KEYS, TYPES, Choices, InputSpec, ParamSpec,
                                    Price, Target, Workflow, WorkflowFileError)

__all__ = [
    "FIELD_RE", "MAX_PRICE", "NAME_RE", "PRICE_KEYS", "TYPES", "Choices", "InputSpec", "ParamSpec", "Price",
    "Target", "Workflow", "WorkflowFileError", "choices_from_object_info", "load_price", "load_workflow",
    "load_workflows",
]
