"""What the trainer's choice-valued flags may take, and which optimizer takes which setting.

Plain data, below both the config that checks flags (config.py) and the modules that act on
the choices (strategies, optimizers, the step): so a bad flag, the trainer's or one a launcher
passes through, is refused without loading TensorFlow. Each acting module takes its names from
here; the optimizers check at import that they agree with `OPTIMIZERS`.
"""

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
# Keras's policy names. Mixed: float32 variables and optimizer state, compute in the other dtype.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
JIT_COMPILE_CHOICES = ("auto", "true", "false")
SAM_MODES = ("global", "per_replica")
SCHEDULES = ("constant", "cosine")
# The factor on a Muon update (trainer/optimizers/muon.py): Moonlight's, to share AdamW's
# learning rate, or its author's, sqrt(max(1, fan_out / fan_in)) for a spectral norm of that.
MUON_SCALES = ("moonlight", "spectral")

# Dynamic loss scaling's defaults (mixed_float16): the first scale, 2^15, and the finite steps
# in a row after which it doubles, as Keras's LossScaleOptimizer and PyTorch's GradScaler.
INITIAL_LOSS_SCALE = 2.0**15
LOSS_SCALE_GROWTH_INTERVAL = 2000

# The trainer's flags that set an optimizer's own hyperparameter, each a constructor keyword of
# the optimizers that take it.
OPTIMIZER_SETTINGS = (
    "weight_decay",
    "beta_1",
    "beta_2",
    "momentum",
    "exclude_layers",
    "muon_scale",
)

# --optimizer's values: each optimizer's flag name (its class's `flag_name`), and which of
# OPTIMIZER_SETTINGS its constructor takes. A new optimizer adds its line here
# (docs/writing-an-optimizer.md); a class that disagrees with its line fails at import.
OPTIMIZERS = {
    "adafactor": ("weight_decay",),
    "adam": ("beta_1", "beta_2"),
    "adamw": ("weight_decay", "beta_1", "beta_2"),
    "gd": (),
    "lamb": ("weight_decay", "beta_1", "beta_2"),
    "lion": ("weight_decay", "beta_1", "beta_2"),
    "momentum": ("momentum",),
    "muon": ("weight_decay", "momentum", "exclude_layers", "muon_scale"),
    "nadamw": ("weight_decay", "beta_1", "beta_2"),
    "schedule_free_adamw": ("weight_decay", "beta_1", "beta_2"),
}
# Optimizers that keep an average of the weights as their own state and warm up by themselves
# (Schedule-Free): the trainer validates, tests and exports the average, and refuses a decaying
# schedule and --ema_decay with them.
AVERAGING_OPTIMIZERS = ("schedule_free_adamw",)
