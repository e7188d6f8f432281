# SPDX-License-Identifier: BSD-2-Clause
"""Model configurations: the M³ViT backbone shapes and the named presets.

One frozen dataclass describes a backbone; everything else (the float model, the integer twin,
the model compiler, the benches) derives its shapes from it.
"""

from dataclasses import dataclass, field

__all__ = ["ModelConfig", "PRESETS", "get_config"]


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """An M³ViT backbone (multi-gate MoE: one router per task in every MoE block).

    Parameters
    ----------
    name : str
        Preset name.
    img_h, img_w : int
        Input image height and width in pixels; multiples of ``patch``.
    patch : int
        Patch size (16 in every M³ViT config).
    in_chans : int
        Image channels.
    dim : int
        Embedding dimension D.
    depth : int
        Number of transformer blocks. Odd-indexed blocks are MoE blocks, even ones dense.
    heads : int
        Attention heads; must divide ``dim``.
    mlp_hidden : int
        Hidden width of the dense MLP (4·D in M³ViT).
    num_experts : int
        Experts per MoE block, E.
    top_k : int
        Experts per token, k ≤ E.
    expert_hidden : int
        Hidden width of each expert MLP, Hd.
    num_tasks : int
        Number of tasks T (one router per task per MoE block).
    task_names : tuple of str
        Task names in task-id order.
    task_classes : tuple of int
        Output channels of each task's decoder head.
    """

    name: str
    img_h: int
    img_w: int
    dim: int
    depth: int
    heads: int
    mlp_hidden: int
    num_experts: int
    top_k: int
    expert_hidden: int
    num_tasks: int
    task_names: tuple = field(default=())
    task_classes: tuple = field(default=())
    patch: int = 16
    in_chans: int = 3
    head_channels: int = 256

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty string, not {self.name!r}")
        for attr in ("img_h", "img_w", "dim", "depth", "heads", "mlp_hidden", "num_experts",
                     "top_k", "expert_hidden", "num_tasks", "patch", "in_chans", "head_channels"):
            _positive_int(attr, getattr(self, attr))
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.img_h % self.patch or self.img_w % self.patch:
            raise ValueError(f"image size {self.img_h}x{self.img_w} is not a multiple of the "
                             f"patch size {self.patch}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts "
                             f"({self.num_experts})")
        if not self.task_names:
            object.__setattr__(self, "task_names",
                               tuple(f"task{t}" for t in range(self.num_tasks)))
        if not self.task_classes:
            object.__setattr__(self, "task_classes", (1,) * self.num_tasks)
        if len(self.task_names) != self.num_tasks or len(self.task_classes) != self.num_tasks:
            raise ValueError(f"task_names and task_classes must have num_tasks ({self.num_tasks}) "
                             f"entries, not {len(self.task_names)} and {len(self.task_classes)}")
        for c in self.task_classes:
            _positive_int("task_classes entry", c)

    @property
    def grid_h(self):
        """Patch rows."""
        return self.img_h // self.patch

    @property
    def grid_w(self):
        """Patch columns."""
        return self.img_w // self.patch

    @property
    def num_patches(self):
        """Image patches (tokens without the cls token)."""
        return self.grid_h * self.grid_w

    @property
    def tokens(self):
        """Tokens N, the cls token included."""
        return self.num_patches + 1

    @property
    def head_dim(self):
        """Width of one attention head."""
        return self.dim // self.heads

    @property
    def patch_dim(self):
        """Length of a flattened patch, in (channel, row, column) order."""
        return self.in_chans * self.patch * self.patch

    def is_moe(self, block):
        """Whether block ``block`` is an MoE block (the odd ones, as upstream)."""
        return block % 2 == 1

    @property
    def moe_blocks(self):
        """Indices of the MoE blocks."""
        return tuple(i for i in range(self.depth) if self.is_moe(i))

    def check_task(self, task):
        """Raise ``ValueError`` unless ``task`` is a valid task id."""
        if isinstance(task, bool) or not isinstance(task, int):
            raise TypeError(f"task id must be an integer, not {task!r}")
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task id {task} is out of range for {self.name} "
                             f"({self.num_tasks} tasks: 0..{self.num_tasks - 1})")

    def macs(self):
        """Multiply-accumulates of one backbone pass for one task (k experts per token)."""
        n, d = self.tokens, self.dim
        total = self.num_patches * self.patch_dim * d
        for i in range(self.depth):
            total += n * d * 3 * d + 2 * self.heads * n * n * self.head_dim + n * d * d
            if self.is_moe(i):
                total += n * d * self.num_experts + n * self.top_k * 2 * d * self.expert_hidden
            else:
                total += n * 2 * d * self.mlp_hidden
        return total


PRESETS = {
    cfg.name: cfg for cfg in (
        # Small enough that a whole frame simulates in pure Python in seconds.
        ModelConfig(name="micro", img_h=32, img_w=32, dim=32, depth=2, heads=2, mlp_hidden=128,
                    num_experts=4, top_k=2, expert_hidden=64, num_tasks=2,
                    task_names=("semseg", "depth"), task_classes=(7, 1), head_channels=16),
        # M³ViT's CityScapes ViT-Ti MoE config, the model Edge-MoE runs.
        ModelConfig(name="m3vit-tiny", img_h=128, img_w=256, dim=192, depth=12, heads=3,
                    mlp_hidden=768, num_experts=16, top_k=2, expert_hidden=384, num_tasks=2,
                    task_names=("semseg", "depth"), task_classes=(7, 1)),
        # M³ViT's PASCAL-Context ViT-S MoE config (12 heads of 32, yaml moe_mlp_ratio 2).
        ModelConfig(name="m3vit-small", img_h=512, img_w=512, dim=384, depth=12, heads=12,
                    mlp_hidden=1536, num_experts=16, top_k=2, expert_hidden=768, num_tasks=5,
                    task_names=("semseg", "human_parts", "sal", "normals", "edge"),
                    task_classes=(21, 7, 1, 3, 1)),
    )
}


def get_config(name):
    """Return the preset called ``name``, or raise ``ValueError`` naming the known ones."""
    if isinstance(name, ModelConfig):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(PRESETS)}") from None
