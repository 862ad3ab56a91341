"""Fine-tuning stage: staged unfreezing of whole timm units with frozen BatchNorm, safe LRs and early stopping.

Public API (stable; other stages and commands build on it)::

    from transferlab.finetune import FinetuneOptions, finetune

    outcome = finetune(prepared, run_dir, FinetuneOptions(unfreeze="top:3", epochs=5))
    # -> FinetuneOutcome(run_dir, stages, metric, metrics{'val','test'}, scores{'val','test'}, thresholds,
    #                    model, lp_init, seconds, paths{'train','val','test'}); outcome.test_metrics
    # writes run_dir/finetune.json, augmentation_preview.png, finetuned.safetensors + finetuned.json
    transferlab.model.load_run_model(run_dir)    # reloads it (safetensors keys: backbone.<timm key>, head.<key>)

Lower-level pieces:
    freeze_units(timm_model) -> list[Unit]       # bottom→top: 'conv_stem+bn1', 'blocks.S.I'..., 'conv_head+bn2'
    parse_unfreeze(spec, units) -> list[Unit]    # 'none' | 'all' | 'top:K' | 'blocks.6.0,conv_head+bn2' (top first)
    set_trainable(model, units, trainable)       # others frozen, their BN → FrozenBatchNorm2d
    BN_POLICY[bn_stats]                          # recorded text of the BatchNorm policy, 'frozen' | 'batch'
    build_network(backbone.model, cut_point, head_spec, n_outputs, image_size) -> FinetuneNet (a copy)
    init_from_probe(net, probe.model, n_outputs) # LP-FT: fold a logistic-regression probe into the head
    Trainer(net, units, loaders, loss, classes, FinetuneOptions, checkpoint, fingerprint=, multilabel=, on_epoch=)
        .run(list[StagePlan], resume=load_checkpoint(path) | None) -> list[stage record]
        .scores(loader) -> (mean loss, probabilities, targets)
        .callbacks: EarlyStopping, Checkpointer, Progress(on_epoch)   # engine.Callback: on_stage_start, ...end
    plan_stages(units, target_units, options) -> list[StagePlan]
    depth_search.search_unfreeze(prepared, run_dir, options, trials=6, fraction=0.5) -> (options', record)
    training_transform(eval_transform, preset), save_preview(...)   # presets: basic|randaugment|trivialaugment|none
    LabelledImages, training_loader, evaluation_loader, loss_function (balance: none|weights|sampler)
"""

from transferlab.finetune.batchnorm import BN_POLICY, set_trainable
from transferlab.finetune.blocks import Unit, freeze_units, parse_unfreeze
from transferlab.finetune.checkpoint import load_checkpoint
from transferlab.finetune.engine import StagePlan, Trainer
from transferlab.finetune.network import FinetuneNet, build_network, init_from_probe
from transferlab.finetune.options import FinetuneOptions
from transferlab.finetune.run import FinetuneOutcome, finetune, plan_stages

__all__ = [
    "BN_POLICY",
    "FinetuneNet",
    "FinetuneOptions",
    "FinetuneOutcome",
    "StagePlan",
    "Trainer",
    "Unit",
    "build_network",
    "finetune",
    "freeze_units",
    "init_from_probe",
    "load_checkpoint",
    "parse_unfreeze",
    "plan_stages",
    "set_trainable",
]
