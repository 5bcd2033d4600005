"""Logistic-normal approximation of a symmetric Dirichlet prior and its KL divergence."""
from __future__ import annotations

import torch


def laplace_dirichlet_prior(n_topics: int, alpha: float = 1.0) -> tuple[float, float]:
    """Mean and variance of the Laplace (softmax-basis) approximation of Dirichlet(alpha).

    For a symmetric Dirichlet the mean is 0 and the variance (1/alpha)(1 - 2/K) + 1/(K alpha),
    i.e. 1 - 1/K for alpha = 1 (Srivastava and Sutton, 2017; used by ECRTM and scE2TM).
    """
    K = float(n_topics)
    var = (1.0 / alpha) * (1.0 - 2.0 / K) + (1.0 / (K * K)) * (K / alpha)
    return 0.0, var


def kl_diag_gaussian(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: float, prior_var: float) -> torch.Tensor:
    """Per-cell KL( N(mu, exp(logvar)) || N(prior_mu, prior_var) ), summed over topics. Shape ``(B,)``."""
    var_ratio = torch.exp(logvar) / prior_var
    diff = (mu - prior_mu) ** 2 / prior_var
    return 0.5 * (var_ratio + diff - 1.0 - logvar + torch.log(torch.as_tensor(prior_var))).sum(dim=1)
