"""TinyVAE: a 64x64 RGB crop (12,288 values) to a 64-d latent (192x fewer values) and back.

Follows:
- Kingma & Welling, "Auto-Encoding Variational Bayes" (2014): Gaussian posterior
  q(z|x) = N(mu, sigma^2), the reparameterisation trick, loss = reconstruction + beta * KL
  (beta-VAE weighting, Higgins et al. 2017, with beta = 0.1 by default);
- Howard et al., "MobileNets" (2017): depthwise-separable convolutions (a per-channel 3x3
  conv, then a 1x1 conv mixing channels). As in MobileNet, the stem that reads the 3 colour
  channels is a full 3x3 conv: a depthwise conv over 3 channels sees too little;
- Rybkin, Daniilidis & Levine, "Simple and Effective VAE Training with Calibrated
  Decoders" (sigma-VAE, 2021), as an option: the decoder variance is each crop's own MSE;
- Wu & He, "Group Normalization" (2018): GroupNorm, so a batch of one behaves like any other;
- Wang et al., "Image Quality Assessment: From Error Visibility to Structural Similarity"
  (SSIM, 2004), as an optional perceptual term of the reconstruction;
- a shift-consistency term in the spirit of Chen et al., "A Simple Framework for Contrastive
  Learning" (SimCLR, 2020), without negatives: the latents of two overlapping crops of one
  scene should point the same way (cosine of batch-centred means, so a shared offset cannot
  fake agreement).

Encoder: 3 -> 16 -> 32 -> 64 channels, stride 2 each (64 -> 32 -> 16 -> 8 pixels), then
linear heads to mu and log sigma^2. The decoder mirrors it with transposed convs and ends in
a sigmoid, so pixels are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VAEConfig:
    """Shape and loss of a TinyVAE. Stored next to every checkpoint as JSON."""

    image_size: int = 64
    """Side of the square RGB input, in pixels; must be divisible by 2**len(widths)."""
    widths: tuple[int, ...] = (16, 32, 64)
    """Channels after each stride-2 stage of the encoder (the decoder mirrors them)."""
    latent_dim: int = 64
    """Size of the latent z (64 -> a 192x reduction of a 64x64x3 crop)."""
    extra_blocks: int = 0
    """Stride-1 residual depthwise-separable blocks added after each stage (0 = the plain design)."""
    decoder_blocks: int = 0
    """Stride-1 residual blocks at the start of each decoder stage (8, 16, 32 px), decoder only
    (outside the encode budget). Their last conv starts at zero, so each starts as the
    identity and a model grown from a checkpoint without them starts as that model."""
    groups: int = 8
    """GroupNorm groups; must divide every width."""
    beta: float = 0.1
    """Weight of the KL term (beta-VAE); 0 makes a plain autoencoder."""
    ssim_weight: float = 0.0
    """Weight of an extra (1 - SSIM) term, scaled by the pixel count like the squared error."""
    shift_weight: float = 0.0
    """Weight of the shift-consistency term (1 - cosine of the batch-centred latents of two
    shifted views), scaled by the pixel count like the squared error; 0 = off."""
    upsample: str = "nearest"
    """Upsampling in the decoder's shortcut path: ``nearest`` or ``bilinear`` (smooth
    gradients without the 8x8 block pattern nearest upsampling leaves on flat crops)."""
    recon: str = "sse"
    """Reconstruction term: ``sse`` (summed squared error, a Gaussian decoder of fixed
    variance) or ``sigma_vae`` (a Gaussian decoder whose variance is the crop's own MSE,
    Rybkin et al. 2021: (D / 2) * log(MSE), which weights every crop's PSNR alike)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.widths:
            raise ValueError("widths must name at least one stage, e.g. (16, 32, 64)")
        if self.image_size % (2 ** len(self.widths)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{len(self.widths)} "
                             f"(one halving per width in {self.widths})")
        bad = [w for w in self.widths if w % self.groups]
        if bad:
            raise ValueError(f"groups={self.groups} must divide every width; it does not divide {bad}")
        if self.latent_dim < 1 or self.extra_blocks < 0 or self.decoder_blocks < 0:
            raise ValueError(f"latent_dim must be >= 1, extra_blocks and decoder_blocks >= 0, got "
                             f"{self.latent_dim}, {self.extra_blocks}, {self.decoder_blocks}")
        if self.recon not in ("sse", "sigma_vae"):
            raise ValueError(f"recon must be 'sse' or 'sigma_vae', got {self.recon!r}")
        if self.beta < 0 or self.ssim_weight < 0 or self.shift_weight < 0:
            raise ValueError(f"beta, ssim_weight and shift_weight must be >= 0, got {self.beta}, "
                             f"{self.ssim_weight}, {self.shift_weight}")
        if self.upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {self.upsample!r}")

    @property
    def map_size(self) -> int:
        """Side of the encoder's last feature map (8 for 64 px and three stages)."""
        return self.image_size // 2 ** len(self.widths)

    @property
    def flat_dim(self) -> int:
        """Values in the last feature map, the input of the latent heads."""
        return self.widths[-1] * self.map_size ** 2

    @property
    def input_dim(self) -> int:
        return 3 * self.image_size ** 2


class SepBlock(nn.Module):
    """Pre-norm residual depthwise-separable block: x -> shortcut(x) + PW(DW(ReLU(GN(x)))).

    ``mode`` is ``same`` (3x3 depthwise), ``down`` (3x3 depthwise, stride 2; shortcut = 2x2
    average pool + 1x1 conv) or ``up`` (the mirror: a 2x2 stride-2 transposed conv, which
    mixes channels, then a 3x3 depthwise conv; shortcut = nearest upsampling + 1x1 conv). The norm sits on the branch only (He et al. 2016,
    "Identity Mappings in Deep Residual Networks"), so the stream keeps each crop's absolute
    brightness and contrast, which a per-sample GroupNorm on the main path would erase.
    """

    def __init__(self, cfg: VAEConfig, c_in: int, c_out: int, mode: str = "same"):
        super().__init__()
        if mode == "up":  # 2x2 stride-2 transposed conv (a per-pixel matmul), then depthwise 3x3
            convs = [nn.ConvTranspose2d(c_in, c_out, 2, 2, bias=False),
                     nn.Conv2d(c_out, c_out, 3, 1, 1, groups=c_out)]
        else:
            convs = [nn.Conv2d(c_in, c_in, 3, 2 if mode == "down" else 1, 1, groups=c_in, bias=False),
                     nn.Conv2d(c_in, c_out, 1)]
        self.branch = nn.Sequential(nn.GroupNorm(cfg.groups, c_in), nn.ReLU(), *convs)
        up = nn.Upsample(scale_factor=2, mode=cfg.upsample)
        resample = {"same": nn.Identity(), "down": nn.AvgPool2d(2), "up": up}[mode]
        proj = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)
        self.shortcut = nn.Sequential(resample, proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.branch(x)  # (B, c_out, H', W')


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        w = cfg.widths
        layers: list[nn.Module] = [nn.Conv2d(3, w[0], 3, 2, 1)]  # full-conv stem, as in MobileNet
        layers += [SepBlock(cfg, w[0], w[0]) for _ in range(cfg.extra_blocks)]
        for c_in, c_out in zip(w[:-1], w[1:]):
            layers.append(SepBlock(cfg, c_in, c_out, "down"))
            layers += [SepBlock(cfg, c_out, c_out) for _ in range(cfg.extra_blocks)]
        self.features = nn.Sequential(*layers)
        self.mu = nn.Linear(cfg.flat_dim, cfg.latent_dim)
        self.logvar = nn.Linear(cfg.flat_dim, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).flatten(1)  # (B, C*S*S)
        return self.mu(h), self.logvar(h)  # (B, Z), (B, Z)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths[::-1]
        self.fc = nn.Linear(cfg.latent_dim, cfg.flat_dim)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(w[:-1], w[1:]):
            layers += [SepBlock(cfg, c_in, c_in) for _ in range(cfg.extra_blocks)]
            layers.append(SepBlock(cfg, c_in, c_out, "up"))
        layers += [SepBlock(cfg, w[-1], w[-1]) for _ in range(cfg.extra_blocks)]
        layers.append(nn.ConvTranspose2d(w[-1], 3, 4, 2, 1))  # mirror of the stem
        self.net = nn.Sequential(*layers)
        # a separate list, so the names in `net` (and older checkpoints) stay as they are
        self.refine = nn.ModuleList(nn.Sequential(*[zero_branch(SepBlock(cfg, c, c))
                                                    for _ in range(cfg.decoder_blocks)]) for c in w)
        self.stage_starts = [i * (cfg.extra_blocks + 1) for i in range(len(w))]  # index in `net`

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.cfg.map_size
        h = self.fc(z).view(-1, self.cfg.widths[-1], s, s)  # (B, C, S, S)
        for i, layer in enumerate(self.net):
            if i in self.stage_starts:
                h = self.refine[self.stage_starts.index(i)](h)
            h = layer(h)
        return torch.sigmoid(h)  # (B, 3, H, W) in [0, 1]


def zero_branch(block: SepBlock) -> SepBlock:
    """Zero the last conv of a block's branch: the block starts as its shortcut (Goyal et al.
    2017's zero-initialised residual branches)."""
    last = block.branch[-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
    return block


class TinyVAE(nn.Module):
    """``encode`` -> (mu, logvar); ``decode`` -> pixels; ``forward`` samples z during training."""

    def __init__(self, cfg: VAEConfig | None = None):
        super().__init__()
        self.cfg = cfg or VAEConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (B, 3, H, W) in [0, 1] -> mu, logvar: (B, Z)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: (B, Z) -> (B, 3, H, W) in [0, 1]."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)  # (B, Z)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(z), mu, logvar


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per latent dimension: (B, Z) -> (B, Z), in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def shift_disagreement(mu_a: torch.Tensor, mu_b: torch.Tensor) -> torch.Tensor:
    """1 - cosine of the batch-centred latents of two views, per pair: (B, Z), (B, Z) -> (B,).

    Centring on the batch mean of both views means a constant offset shared by every latent
    cannot raise the agreement; only what tells one scene from another counts.
    """
    centre = 0.5 * (mu_a.mean(0) + mu_b.mean(0))  # (Z,)
    return 1.0 - nn.functional.cosine_similarity(mu_a - centre, mu_b - centre, dim=1)


def vae_loss(cfg: VAEConfig, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor,
             logvar: torch.Tensor, mu_shifted: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-crop sums averaged over the batch: reconstruction + beta * KL (+ SSIM, + shift terms).

    ``x``, ``recon``: (B, 3, H, W) in [0, 1]; ``mu``, ``logvar``: (B, Z); ``mu_shifted``:
    (B, Z), the latent of a shifted view of each crop (needed when ``shift_weight > 0``).
    Returns ``loss`` (what is minimised), ``recon`` (summed squared error per crop),
    ``kl`` (nats per crop), ``mse`` (per pixel value) and, with the shift term, ``shift_cos``
    (the mean centred cosine of the two views).
    """
    sq = (recon - x).pow(2).flatten(1).sum(1)  # (B,)
    kl = kl_per_dim(mu, logvar).sum(1)  # (B,)
    if cfg.recon == "sigma_vae":  # NLL with the optimal per-crop variance, up to a constant
        nll = 0.5 * cfg.input_dim * torch.log(sq / cfg.input_dim + 1e-6)
    else:
        nll = sq
    loss = nll + cfg.beta * kl
    if cfg.ssim_weight > 0:
        from pytorch_msssim import ssim

        s = ssim(recon, x, data_range=1.0, size_average=False)  # (B,)
        loss = loss + cfg.ssim_weight * cfg.input_dim * (1.0 - s)
    out = {"recon": sq.mean(), "kl": kl.mean(), "mse": sq.mean() / cfg.input_dim}
    if cfg.shift_weight > 0:
        if mu_shifted is None:
            raise ValueError("shift_weight > 0 needs mu_shifted, the latents of shifted views")
        dis = shift_disagreement(mu, mu_shifted)  # (B,)
        loss = loss + cfg.shift_weight * cfg.input_dim * dis
        out["shift_cos"] = 1.0 - dis.mean()
    return {"loss": loss.mean(), **out}
