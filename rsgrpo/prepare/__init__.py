"""prepare stage: model specs -> checkpoint directories, dataset specs -> JSONL records.

Model sources live in a registry (:data:`rsgrpo.prepare.model_sources.MODEL_SOURCES`) that other
modules add to. Source ``pretrain`` is registered by :mod:`rsgrpo.prepare.pretrain`, which imports
``model_sources`` (model_sources must not import it back: that would be an import circle). Importing
it here makes ``pretrain`` registered whenever the registry is: any import of a ``rsgrpo.prepare``
module runs this file first. Cheap: these modules import torch and transformers only inside functions.
"""

from rsgrpo.prepare import pretrain  # noqa: F401  (registers model source "pretrain")
