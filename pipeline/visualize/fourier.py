"""An image parameterised in a decorrelated Fourier space (Olah et al., "Feature Visualization").

Optimising raw pixels for a unit gives high-frequency adversarial noise. Parameterising the
image by its 2-D spectrum, scaled by 1/frequency, makes a gradient step move low frequencies as
much as high ones (the spectrum of natural images falls as 1/f), and mixing the colour channels
through the square root of natural images' colour covariance decorrelates them; a sigmoid keeps
pixels in [0, 1]. ``image()`` maps parameters to RGB in [0, 1]; ``from_image`` is its inverse.

The constants are the published ones (lucid's ImageNet colour correlation, its square root by
SVD); the arithmetic is written from the definitions here.
"""
from __future__ import annotations

import torch

# Square root (by SVD) of the colour covariance of ImageNet images, RGB rows.
COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR = COLOR_SQRT / COLOR_SQRT.norm(dim=0).max()


def frequency_scale(h: int, w: int, decay: float = 1.0) -> torch.Tensor:
    """1/f^decay per rfft2 coefficient, (h, w//2 + 1). With the orthonormal inverse FFT this is
    lucid's scaling (its unnormalised TF inverse divides by h w, which its sqrt(h w) factor halves)."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    f = (fy ** 2 + fx ** 2).sqrt().clamp_min(1.0 / max(h, w))
    return f.pow(-decay)


class FourierImage(torch.nn.Module):
    """B images (B, 3, H, W) in [0, 1] from B spectra; each row is its own parameter slice."""

    def __init__(self, spectra: torch.Tensor, size: int) -> None:
        super().__init__()
        self.size = size
        self.spectra = torch.nn.Parameter(spectra)  # (B, 3, H, W//2+1, 2): real and imaginary parts
        self.register_buffer("scale", frequency_scale(size, size))

    @classmethod
    def random(cls, generators: list[torch.Generator], size: int, sd: float = 0.01) -> "FourierImage":
        """One spectrum per generator (so a unit's start does not depend on its batch)."""
        shape = (3, size, size // 2 + 1, 2)
        return cls(torch.stack([torch.randn(shape, generator=g) * sd for g in generators]), size)

    def image(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectra) * self.scale
        x = torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho") / 4.0
        x = torch.einsum("bchw,dc->bdhw", x, COLOR.to(x))
        return torch.sigmoid(x)

    @classmethod
    def from_image(cls, image: torch.Tensor) -> "FourierImage":
        """The parameters whose ``image()`` is ``image`` (B, 3, S, S), values strictly inside (0, 1)."""
        size = image.shape[-1]
        x = torch.logit(image.double())
        x = torch.einsum("bdhw,cd->bchw", x, torch.linalg.inv(COLOR.double()))
        spec = torch.fft.rfft2(x * 4.0, norm="ortho") / frequency_scale(size, size).double()
        return cls(torch.view_as_real(spec).float().contiguous(), size)
