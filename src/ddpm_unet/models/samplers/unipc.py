"""UniPC (Zhao et al. 2023): a unified predictor-corrector multistep solver in data prediction,
`B(h) = exp(h) - 1` ("bh2"), orders 1 to 3; diffusers' `UniPCMultistepScheduler`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ddpm_unet.models.samplers.base import Chain
from ddpm_unet.models.samplers.timeline import SigmaSpacing, Timeline, TimelineSampler
from ddpm_unet.utils.errors import UserError


def unipc_coefficients(
    h: float, rks: list[float], order: int
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """For a step of `h = lambda_t - lambda_s` (lambda = -log sigma) with the previous points at
    `rks` (`(lambda_k - lambda_s) / h`, `order - 1` of them): `h_phi_1 = exp(-h) - 1`,
    `B(h) = exp(-h) - 1`, the predictor's weights `rhos_p` (`order - 1`) and the corrector's
    `rhos_c` (`order`), float64 (Algorithm 1 / 2 of the paper's bh2 variant, as diffusers)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    r = np.array([*rks, 1.0])
    rows, b = [], []
    for k in range(1, order + 1):
        rows.append(r ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b_vec = np.stack(rows), np.array(b)
    # order 2's predictor and order 1's corrector: the paper's simplified 0.5.
    rhos_p = (
        np.array([0.5])
        if order == 2
        else np.linalg.solve(R[:-1, :-1], b_vec[:-1])
        if order > 2
        else np.zeros(0)
    )
    rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(R, b_vec)
    return h_phi_1, b_h, rhos_p, rhos_c


@dataclass
class UniPC(TimelineSampler):
    """UniPC-`order` with bh2 (diffusers' defaults: `predict_x0=True`, `lower_order_final=True`,
    `final_sigmas_type="zero"`, the corrector on every step). One model call per step: the
    corrector of step i reuses the model call at the point the predictor of step i - 1 reached,
    so UniC raises the order for free. The first steps warm up with lower orders; the last steps
    lower theirs to the steps left (the last is first order, landing on the predicted `x0`).

    On `x~`, with the previous predictions `m_k` at `lambda_k` and `D_k = (m_k - m_0) / r_k`:
    predictor `x~_t = sigma_t / sigma_s x~_s - h_phi_1 m_0 - B(h) sum_k rho^p_k D_k`; corrector
    the same from the same `x~_s` with the new prediction `m_t` as an extra point, weights rho^c.
    On `karras` sigmas diffusers rounds the network's t; we pass the interpolated t (see
    `DPMSolver`).
    """

    name: ClassVar[str] = "unipc"
    steps: int = 10
    order: int = 2
    sigmas: SigmaSpacing = "trailing"
    rho: float = 7.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order not in (1, 2, 3) or isinstance(self.order, bool):
            raise UserError(f"order={self.order!r} must be 1, 2 or 3, e.g. order=2.")

    def solve(
        self,
        model_x0: Callable[..., torch.Tensor],
        timeline: Timeline,
        x: torch.Tensor,
        chain: Chain,
        steps: Callable[[Iterable[int]], Iterable[int]],
    ) -> torch.Tensor:
        s = timeline.sigmas.tolist()
        lam = [-math.log(v) if v > 0 else math.inf for v in s]
        history: list[tuple[int, torch.Tensor]] = []  # (grid index, x0), newest last
        last_x, last_order = None, 0
        for i in steps(range(self.steps)):
            m_t = model_x0(x, s[i], timeline.t[i])
            if last_x is not None:  # UniC: correct x~_i with the model call made there
                x = self._update(s, lam, i - 1, i, last_x, history, last_order, m_t)
            history = [*history, (i, m_t)][-self.order :]
            # warm-up (as many points as there are) and lower order at the end (steps left)
            order = min(self.order, self.steps - i, len(history))
            last_x, last_order = x, order
            x = self._update(s, lam, i, i + 1, x, history, order, None)
        return x

    @staticmethod
    def _update(
        s: list[float],
        lam: list[float],
        src: int,
        dst: int,
        x: torch.Tensor,
        history: list[tuple[int, torch.Tensor]],
        order: int,
        m_t: torch.Tensor | None,
    ) -> torch.Tensor:
        """`x~` at grid point `src` -> at `dst`, from the predictions in `history` (newest at
        `src`): the predictor (`m_t` None) or, with the prediction `m_t` at `dst`, the corrector."""
        if s[dst] == 0:  # first order to sigma 0: exactly the predicted data
            return history[-1][1]
        h = lam[dst] - lam[src]
        _, m0 = history[-1]
        older = history[-order:-1][::-1] if order > 1 else []  # newest first
        rks = [(lam[k] - lam[src]) / h for k, _ in older]
        h_phi_1, b_h, rhos_p, rhos_c = unipc_coefficients(h, rks, order)
        out = (s[dst] / s[src]) * x - h_phi_1 * m0
        diffs = [(m - m0) / r for (_, m), r in zip(older, rks, strict=True)]
        if m_t is None:
            for rho, d in zip(rhos_p, diffs, strict=True):
                out = out - b_h * float(rho) * d
            return out
        for rho, d in zip(rhos_c[:-1], diffs, strict=True):
            out = out - b_h * float(rho) * d
        return out - b_h * float(rhos_c[-1]) * (m_t - m0)
