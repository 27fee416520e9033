"""The coordinate updates and the bound of :class:`~pyro_vae.cavi.auto.AutoCAVI`, from the
factors it probed: q_j ∝ exp(η_j · T_j) with η_j the summed expected messages of x_j's
factors (Winn & Bishop 2005; Blei et al. 2017, eq. 17), a chain's q by forward-backward,
and L(q) = Σ_f E_q[log f] + Σ_j H[q_j] in nats, whole data set, every constant kept.

:class:`CoordinateUpdates` is a mixin: it reads the state ``AutoCAVI`` keeps while it fits
(``_latents``, ``_factors``, ``_blanket``, ``_frames_used``, ``_q``, ``_pairs``,
``_chain_entropy``, ``_absent``, ``_eta``, ``_stacks``, ``_local_cache``, ``_constants``,
``_chain_sites``) and holds no state of its own.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pyro_vae.cavi.chains import update_chain
from pyro_vae.cavi.column_sums import summed_message, summed_total
from pyro_vae.cavi.data_indexing import scatter_by_index
from pyro_vae.cavi.expectations import component_message, contract, message_to
from pyro_vae.cavi.probe_frames import local_expected_statistics, local_map, q_from_local
from pyro_vae.cavi.stacked_factors import stack_chain_factors


class CoordinateUpdates:
    """Closed-form updates of each latent's q, of each chain's, and the bound L(q)."""

    def _update(self, name: str, stats) -> torch.distributions.Distribution:
        """q_j ∝ exp(η_j · T_j), η_j the summed expected messages of j's factors. After a
        re-probe each message is made from the factor's local coefficients and the others'
        local statistics (no cancellation of large terms: a mixture's message to z_n,
        −½(y² − 2yE[μ] + E[μ²]) for y near 10⁹, subtracts terms of 10¹⁸); for a latent
        with a frame it is then in the frame's local coordinates, and q is mapped back."""
        latent = self._latents[name]
        frame = self._frames_used.get(name)
        factors, stats = self._local_view(self._blanket[name], stats)
        shape = latent.batch_shape + (latent.family.size,)
        total = torch.zeros(shape, dtype=torch.float64)
        factors, stacks = self._stacked(factors, stats)
        for stack in stacks:  # a chain's steps of one form: one contraction
            stacked, linked = stack.statistics(stats, self._pairs)
            message = contract(stack.factor, stacked, (name,), linked)
            total = total + message_to(stack.factor, name, message, shape)
        for factor in factors:
            summed = summed_message(factor, stats, name, shape, self._constants, self._pairs)
            if summed is None:
                summed = component_message(factor, stats, name, shape, self._pairs)
            if summed is not None:  # from its columns summed over the data once
                total = total + summed
                continue
            message = contract(factor, stats, (name,), self._pairs)
            if name in factor.index:  # per datum: summed at the groups they read
                message = scatter_by_index(message, factor.index[name], shape)
            total = total + message_to(factor, name, message, shape)
        eta = total[..., 1:] if latent.family.has_constant else total
        if latent.present is not None:
            # masked off and mentioned by no other factor, or obs_mask's <site>_unobserved
            # where data are observed (its children read the data there, through
            # torch.where; tester Z: counted, each labelled datum's q was uniform and its
            # log K of entropy put the bound above log p(x)): absent from the model, a
            # standard q that the bound leaves out. Mentioned by a child: a flat prior, also
            # where the child's likelihoods happen to tie (tester AB: a test of constant
            # messages dropped its log K there)
            absent = ~latent.present & ((total == 0).all(-1) | latent.imputed)
            self._absent[name] = absent if bool(absent.any()) else None
            eta = torch.where(absent.unsqueeze(-1), latent.family.neutral_eta(absent.shape), eta)
        self._eta[name] = eta  # in the frame's coordinates: over-relaxation's (see _sweeps)
        q = latent.family.distribution(eta)
        return q if frame is None else q_from_local(latent.family, q, frame)

    def _stacked(self, factors: list, stats, chain_sites=None) -> tuple[list, list]:
        """:func:`~pyro_vae.cavi.stacked_factors.stack_chain_factors` of ``factors`` on the
        sites of every chain (``chain_sites``: of one chain, for its forward-backward),
        kept per factor list and sites while no frame rewrites their coefficients (a sweep
        groups the same lists again for every latent, every chain and the bound: on a
        five-step model that cost more than the contractions it saved, and on a chain of
        200 steps, 3 ms a sweep)."""
        sites = self._chain_sites if chain_sites is None else frozenset(chain_sites)
        if self._frames_used:
            return stack_chain_factors(factors, sites, stats, self._pairs)
        key = (id(factors), sites)
        hit = self._stacks.get(key)
        if hit is None or hit[0] is not factors:
            hit = (factors, *stack_chain_factors(factors, sites, stats, self._pairs))
            self._stacks[key] = hit
        return hit[1], hit[2]

    def _local_view(self, factors, stats) -> tuple[list, dict]:
        """``factors`` with their local coefficients where they have them, and the
        statistics in the frames' coordinates (:meth:`_local_statistics`): a factor
        solved around q contracts there; one no framed latent mentions has no local
        coefficients, and its members' local statistics are their natural ones."""
        if not self._frames_used:
            return factors, stats
        # once per factor list (kept with the stacks, which a re-probe clears): made at
        # every update and bound, its copies cost 5 to 10% of a sweep (crossed effects)
        key = ("local", id(factors))
        hit = self._stacks.get(key)
        if hit is None or hit[0] is not factors:
            local = [f if f.local is None else replace(f, coefficients=f.local) for f in factors]
            read = {name for f in factors for name in f.latents}
            hit = (factors, local, read)
            self._stacks[key] = hit
        return hit[1], self._local_statistics(stats, hit[2])

    def _local_statistics(self, stats, read=None) -> dict:
        """E_q[T] in the frames' coordinates for the latents with one (of those in ``read``,
        when given: the ones the factors contract), else as ``stats``: from q's moments
        about the frame, or, for a latent not updated yet this round (at its start), mapped
        from ``stats`` (N·E[T], whose rounding a start can bear)."""
        local = dict(stats)
        cache = self._local_cache
        for name, frame in self._frames_used.items():
            if read is not None and name not in read:
                continue
            family = self._latents[name].family
            if name in self._q:
                q = self._q[name]
                # once per q and frame: a sweep reads it at every update and at the bound
                # (the cache holds q and the frame, so their ids are not reused meanwhile)
                hit = cache.get(name)
                if hit is None or hit[0] is not q or hit[1] is not frame:
                    hit = (q, frame, local_expected_statistics(family, q, frame))
                    cache[name] = hit
                local[name] = hit[2]
            else:
                mapped = local_map(family, frame) @ stats[name].unsqueeze(-1)
                local[name] = mapped.squeeze(-1)
        return local

    def _update_chain(self, chain: tuple[str, ...], stats) -> None:
        factors, local = self._local_view(self._factors, stats)
        present = {site: self._latents[site].present for site in chain}
        imputed = frozenset(site for site in chain if self._latents[site].imputed)
        marginals, pairwise, entropy, absent = update_chain(
            chain,
            factors,
            local,
            self._pairs,
            present,
            self._stacked(factors, local, chain),
            imputed,
        )
        for t, site in enumerate(chain):
            stats[site] = marginals[t]
            self._q[site] = torch.distributions.Categorical(probs=marginals[t], validate_args=False)
            self._absent[site] = absent[t] if bool(absent[t].any()) else None
            if t:
                self._pairs[(chain[t - 1], site)] = pairwise[t - 1]
        self._chain_entropy[chain] = entropy

    def _bound(self, stats) -> float:
        """L(q) in nats: :meth:`_expected_log_joint` plus q's entropy."""
        expected = float(self._expected_log_joint(stats))
        in_chains = {s for chain in self._chain_entropy for s in chain}
        entropy = sum(
            float(without_absent(q.entropy(), self._absent.get(n)).sum())
            for n, q in self._q.items()
            if n not in in_chains
        )
        return expected + entropy + sum(self._chain_entropy.values())

    def _expected_log_joint(self, stats) -> torch.Tensor:
        """E_q[log p(x, z)] in nats, a 0-dim tensor (differentiable in ``stats`` and in the
        q's the frames' statistics are made from); each factor's E_q[log f] from the
        coefficients it was solved in (in q's local coordinates after a re-probe: no
        cancellation of large terms)."""
        factors, local = self._local_view(self._factors, stats)
        expected = torch.zeros((), dtype=torch.float64)
        factors, stacks = self._stacked(factors, local)
        for stack in stacks:  # a chain's steps of one form: one contraction
            stacked, linked = stack.statistics(local, self._pairs)
            expected = expected + contract(stack.factor, stacked, (), linked).sum()
        for f in factors:
            summed = summed_total(f, local, self._constants, self._pairs)
            if summed is None:
                summed = contract(f, local, (), self._pairs).sum()
            expected = expected + summed
        return expected


def without_absent(entropy: torch.Tensor, absent: torch.Tensor | None) -> torch.Tensor:
    """The entropies of the elements present in the model: an absent one (masked off, and
    mentioned by no factor) is left out of the bound (padding leaves it unchanged)."""
    return entropy if absent is None else torch.where(absent, 0.0, entropy)
