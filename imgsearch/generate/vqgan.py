"""VQGAN (Esser et al., "Taming Transformers") in the checkpoint format people use for VQGAN+CLIP.

The modules below mirror the taming-transformers layout, so a `last.ckpt` + `model.yaml` pair such as
`vqgan_imagenet_f16_16384` loads straight into them: the parameter names are the checkpoint's keys
(`encoder.down.0.block.1.norm2.weight`, `quantize.embedding.weight`, `post_quant_conv.bias`, ...).
Only what generation needs is built: the encoder (for --init-image), the codebook and the decoder;
the training loss and discriminator in the checkpoint are ignored.

Checkpoints are PyTorch Lightning pickles. They are read with torch's weights-only unpickler; classes
it does not allow (Lightning callbacks, argparse namespaces in the hyper-parameters) are replaced by
inert placeholders, so no code from the file ever runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgsearch.errors import WeightsError


@dataclass(frozen=True)
class VQGANConfig:
    """The `model.params` of a taming VQModel config (ddconfig flattened in)."""

    embed_dim: int
    n_embed: int
    z_channels: int
    resolution: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    in_channels: int = 3
    out_ch: int = 3
    double_z: bool = False

    @property
    def downscale(self) -> int:
        """Pixels per latent cell along each side (16 for an "f16" model)."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_yaml(self) -> dict[str, Any]:
        """The config as taming writes it (model.yaml)."""
        ddconfig = {
            "double_z": self.double_z,
            "z_channels": self.z_channels,
            "resolution": self.resolution,
            "in_channels": self.in_channels,
            "out_ch": self.out_ch,
            "ch": self.ch,
            "ch_mult": list(self.ch_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_resolutions": list(self.attn_resolutions),
            "dropout": 0.0,
        }
        params = {"embed_dim": self.embed_dim, "n_embed": self.n_embed, "ddconfig": ddconfig}
        return {"model": {"target": "taming.models.vqgan.VQModel", "params": params}}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions of a feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (t.reshape(b, c, h * w).transpose(1, 2) for t in (self.q(n), self.k(n), self.v(n)))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # the asymmetric padding the checkpoints were trained with


def _level(blocks: Sequence[nn.Module], attns: Sequence[nn.Module]) -> Any:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


def _run_blocks(level: Any, h: torch.Tensor) -> torch.Tensor:
    """A resolution level's ResNet blocks, each followed by its attention block where the level has them."""
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


def _middle(channels: int) -> Any:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _run_middle(mid: Any, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        res, channels = cfg.resolution, cfg.ch
        self.down: Any = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(channels, cfg.ch * mult))
                channels = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(channels))
            level = _level(blocks, attns)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(channels)
                res //= 2
            self.down.append(level)
        self.mid = _middle(channels)
        self.norm_out = _norm(channels)
        self.conv_out = nn.Conv2d(channels, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_blocks(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(_swish(self.norm_out(_run_middle(self.mid, h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        channels = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downscale
        self.conv_in = nn.Conv2d(cfg.z_channels, channels, 3, padding=1)
        self.mid = _middle(channels)
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.ch_mult))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, cfg.ch * cfg.ch_mult[i]))
                channels = cfg.ch * cfg.ch_mult[i]
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(channels))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(channels)
                res *= 2
            levels.insert(0, level)
        self.up: Any = nn.ModuleList(levels)  # indexed by resolution level, as in the checkpoints
        self.norm_out = _norm(channels)
        self.conv_out = nn.Conv2d(channels, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_middle(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = _run_blocks(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Quantizer(nn.Module):
    """The codebook; `snap` replaces each latent vector by its nearest code, passing gradients straight through."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def snap(self, z: torch.Tensor) -> torch.Tensor:
        codes = self.embedding.weight
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.T + codes.pow(2).sum(1)[None, :]
        nearest = codes[distance.argmin(1)].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return z + (nearest - z).detach()


class VQGAN(nn.Module):
    """Encoder, codebook and decoder of a taming VQModel. Pixels are in [-1, 1]."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = Quantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Continuous latents (before snapping) of images in [-1, 1]."""
        return self.quant_conv(self.encoder(pixels))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in (about) [-1, 1] from latents; snaps them to the codebook first."""
        return self.decoder(self.post_quant_conv(self.quantize.snap(z)))

    def random_latent(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """A latent grid of random codebook entries, the usual starting point."""
        cells = (height // self.cfg.downscale) * (width // self.cfg.downscale)
        index = torch.randint(self.cfg.n_embed, (cells,), generator=generator)
        codes = self.quantize.embedding.weight.detach().cpu()[index]
        grid = codes.reshape(height // self.cfg.downscale, width // self.cfg.downscale, -1)
        return grid.permute(2, 0, 1)[None].contiguous()


# loading


def read_config(path: Path) -> VQGANConfig:
    """A taming `model.yaml` (model.params with ddconfig) as a VQGANConfig."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        params = data["model"]["params"]
        dd = params["ddconfig"]
        return VQGANConfig(
            embed_dim=int(params["embed_dim"]),
            n_embed=int(params["n_embed"]),
            z_channels=int(dd["z_channels"]),
            resolution=int(dd["resolution"]),
            ch=int(dd["ch"]),
            ch_mult=tuple(int(m) for m in dd["ch_mult"]),
            num_res_blocks=int(dd["num_res_blocks"]),
            attn_resolutions=tuple(int(r) for r in dd.get("attn_resolutions", [])),
            in_channels=int(dd.get("in_channels", 3)),
            out_ch=int(dd.get("out_ch", 3)),
            double_z=bool(dd.get("double_z", False)),
        )
    except OSError as exc:
        raise WeightsError(f"generate.vqgan_config: cannot read {path} ({exc.strerror or exc})") from None
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"generate.vqgan_config: {path} is not a taming VQGAN config ({exc!r})") from None


def load(checkpoint: Path, config: Path, device: torch.device) -> VQGAN:
    """A VQGAN from a taming checkpoint and its config, in eval mode on device."""
    cfg = read_config(config)
    if cfg.embed_dim <= 0 or cfg.resolution % cfg.downscale or any(c * cfg.ch % 32 for c in cfg.ch_mult):
        raise WeightsError(f"generate.vqgan_config: {config} describes a model this VQGAN cannot build")
    state = _state_dict(checkpoint)
    if "quantize.embed.weight" in state:
        raise WeightsError(
            f"generate.vqgan_checkpoint: {checkpoint} is a Gumbel-quantised VQGAN, which is not supported; "
            "use a VQModel checkpoint such as vqgan_imagenet_f16_16384"
        )
    model = VQGAN(cfg)
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise WeightsError(
            f"generate.vqgan_checkpoint: {checkpoint} does not fit {config.name} "
            f"({len(missing)} weights missing, e.g. {missing[0]})"
        )
    try:
        model.load_state_dict({k: state[k] for k in wanted})
    except RuntimeError as exc:
        first = str(exc).splitlines()[-1].strip()[:160]
        raise WeightsError(f"generate.vqgan_checkpoint: {checkpoint} does not fit {config.name} ({first})") from None
    return model.eval().requires_grad_(False).to(device)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning .ckpt (or a bare state dict), without running code from the file."""
    try:
        with _inert_unknown_globals(path):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"generate.vqgan_checkpoint: no such file: {path}") from None
    except Exception as exc:  # a corrupt or foreign file fails in many ways; all mean the same to a user
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise WeightsError(f"generate.vqgan_checkpoint: cannot read {path} ({first})") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"generate.vqgan_checkpoint: {path} holds no state_dict of tensors")
    return state


class _Inert:
    """Stands in for any class a checkpoint names that the weights-only unpickler does not allow."""

    def __init__(self, *args: object, **kwargs: object):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: object) -> None:
        self.state = state


def _inert_unknown_globals(path: Path) -> Any:
    from torch import serialization

    try:
        unknown = serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint (or unreadable): torch.load reports it properly
        unknown = []
    stubs: list[Any] = [(type(name.rsplit(".", 1)[-1], (_Inert,), {}), name) for name in unknown]
    return serialization.safe_globals(stubs)
