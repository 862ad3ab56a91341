"""One module per CLI command; each exposes ``register(subparsers)`` which adds its parser and sets ``handler``.

Adding a command = adding a module here and its name to ``COMMAND_MODULES``; the CLI core never changes.
"""

COMMAND_MODULES = (
    "run",
    "search",
    "backbones",
    "info",
    "extract",
    "rank",
    "export",
    "predict",
    "evaluate",
    "runs",
    "compare",
    "rerun",
    "report",
    "finetune",
    "lr_find",
)
