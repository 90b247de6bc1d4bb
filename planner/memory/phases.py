"""Terms that scale with batch and tokens, moments ("phases") of a run, and the safe-bound rule.

Every memory term is ``coefficients . basis(batch, tokens)`` with the basis

    const, batch, batch*tokens, batch*min(tokens, window), batch*tokens**2

so the same term list answers one estimate (with formulas) and the vectorised "largest batch /
longest context that fits" searches of ``what_fits`` without being rebuilt. A *phase* is one moment
of a run (weights loading, the MLP of the last prefill layer, the last decode step, ...) with the
tensors alive at that moment; the peak is the largest phase.

Safe-bound rule (:func:`safe_bytes`): each term also carries an *upper* coefficient set, the largest
value its own uncertainty allows (CUDA context range, temporaries that may outlive a statement,
caching-allocator blocks that cannot be reused, ...). ``safe`` = the largest phase when every term
takes its upper value. Nothing is a fudge factor: an exact term has upper == point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planner.memory.result import GIB, MemoryTerm

BASIS: tuple[str, ...] = ("const", "per_seq", "per_token", "per_window_token", "per_token_sq")


@dataclass(frozen=True, slots=True)
class Coeffs:
    """Bytes = const + batch * (per_seq + per_token*T + per_window_token*min(T, W) + per_token_sq*T^2)."""

    const: float = 0.0
    per_seq: float = 0.0
    per_token: float = 0.0
    per_window_token: float = 0.0
    per_token_sq: float = 0.0

    def at(self, batch: int, tokens: int, window: int | None) -> float:
        capped = tokens if window is None else min(tokens, window)
        return self.const + batch * (self.per_seq + self.per_token * tokens + self.per_window_token * capped
                                     + self.per_token_sq * tokens * tokens)

    def scaled(self, factor: float) -> Coeffs:
        return Coeffs(*(getattr(self, name) * factor for name in BASIS))

    def __add__(self, other: Coeffs) -> Coeffs:
        return Coeffs(*(getattr(self, n) + getattr(other, n) for n in BASIS))

    def as_tuple(self) -> tuple[float, ...]:
        return (self.const, self.per_seq, self.per_token, self.per_window_token, self.per_token_sq)



@dataclass(frozen=True, slots=True)
class RawTerm:
    """One additive term in plain floats; becomes a :class:`MemoryTerm` when an estimate is built.

    ``phases`` names the moments the term is alive in; ``tokens`` says which token count it scales
    with: ``"prompt"`` (prefill tensors, a cache grown to the prompt), ``"total"`` (prompt + new
    tokens: the cache at the end, or a cache allocated for the whole length up front) or ``"none"``.
    """

    key: str
    label: str
    point: Coeffs
    formula: str
    source: str
    phases: frozenset[str]
    tokens: str = "none"
    upper: Coeffs | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    counted_in: str = "allocated"

    @property
    def upper_coeffs(self) -> Coeffs:
        return self.upper if self.upper is not None else self.point


@dataclass(frozen=True)
class PhaseSpec:
    """A moment of the run (the terms alive at that moment list its name in ``phases``)."""

    name: str
    description: str


@dataclass(frozen=True)
class PhaseTotals:
    name: str
    allocated: float
    device: float
    upper_device: float
    upper_allocated: float


def tokens_for(term: RawTerm, prompt: int, total: int) -> int:
    return {"none": 0, "prompt": prompt, "total": total}[term.tokens]


def phase_totals(terms: list[RawTerm], phases: list[PhaseSpec], *, batch: int, prompt: int, total: int,
                 window: int | None) -> list[PhaseTotals]:
    """Allocated, device and upper totals (bytes) of every phase."""
    out = []
    for phase in phases:
        allocated = device = upper_alloc = upper_dev = 0.0
        for term in terms:
            if phase.name not in term.phases:
                continue
            tokens = tokens_for(term, prompt, total)
            point = term.point.at(batch, tokens, window)
            upper = term.upper_coeffs.at(batch, tokens, window)
            device += point
            upper_dev += upper
            if term.counted_in == "allocated":
                allocated += point
                upper_alloc += upper
        out.append(PhaseTotals(phase.name, allocated, device, upper_dev, upper_alloc))
    return out


def safe_bytes(totals: list[PhaseTotals]) -> float:
    """The safe-bound rule: the largest phase with every term at its upper value (device level)."""
    return max(t.upper_device for t in totals)


def peak_phase(totals: list[PhaseTotals]) -> PhaseTotals:
    """The phase with the largest allocated total (ties: the device total decides)."""
    return max(totals, key=lambda t: (t.allocated, t.device))


def to_memory_terms(terms: list[RawTerm], phase: PhaseSpec, *, batch: int, prompt: int, total: int,
                    window: int | None) -> tuple[MemoryTerm, ...]:
    """The pydantic terms of one phase, in GiB, with batch and tokens added to their inputs."""
    result = []
    for term in terms:
        if phase.name not in term.phases:
            continue
        tokens = tokens_for(term, prompt, total)
        point = term.point.at(batch, tokens, window)
        inputs = dict(term.inputs)
        if any(term.point.as_tuple()[1:]):
            inputs.setdefault("batch", batch)
        if any(term.point.as_tuple()[2:]):
            inputs.setdefault("tokens", tokens)
        upper = term.upper_coeffs.at(batch, tokens, window)
        if upper != point:
            inputs["upper_gib"] = round(upper / GIB, 4)
        result.append(MemoryTerm(key=term.key, label=term.label, gib=point / GIB, formula=term.formula,
                                 inputs=inputs, source=term.source, counted_in=term.counted_in))
    return tuple(result)

