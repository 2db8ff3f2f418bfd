"""Composition: a batch's factors -> its audio.

Every source into one spectrum (RMS 1, low-passed), ADSR events on a 1 ms control grid, transient bursts, then
(where switched on) the scene's further sources, their distances and the room, peak scaling, background noise and
peak normalization: batched tensor operations, no per-clip loop (docs/world.md describes every stage).
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from audiopg.synth.config import WorldConfig
from audiopg.synth.registry import Partials, Source
from audiopg.synth.rng import Randomness
from audiopg.synth.room import air_absorption_response, fft_size, room_impulse_response

CONTROL_RATE_HZ = 1000  # envelope control points per second (1 ms grid)
AIR_PAD = 256  # zero padding for the air absorption's (zero-phase, sub-millisecond) impulse response


class EnabledSource(NamedTuple):
    """A source type a world draws from: its code (index in the config's sources), name, type and config."""

    code: int
    name: str
    source: Source
    config: Any


class Renderer:
    """Renders the factors of a :class:`~audiopg.synth.world.World`'s clips on its device."""

    def __init__(self, config: WorldConfig, sources: list[EnabledSource], device: torch.device):
        self.config = config
        self.sources = sources
        self.device = device
        self.num_samples = config.num_samples
        self.hop = max(1, round(config.sample_rate / CONTROL_RATE_HZ))  # samples per envelope control step
        self.control_steps = math.ceil((self.num_samples - 1) / self.hop)
        self.slots = config.scene.slots  # source slots per clip (1: no scene)
        self.composed = self.slots > 1 or config.room.enabled or config.distance.enabled

    def render(self, f: dict[str, torch.Tensor], rng: Randomness) -> torch.Tensor:
        """The clips (n, num_samples) of factors ``f``; adds the measured factors (``snr_db``, ``rms_db``, ...)."""
        cfg = self.config
        n, N = f["source"].shape[0], self.num_samples
        x = torch.empty(n, N, device=self.device)
        self._render_sources(x, f, rng)
        event_rms = self._apply_events(x, f)
        self._add_transients(x, f, event_rms, rng)
        if self.composed:
            x = self._compose(x, f, event_rms, rng)
        x.mul_(10 ** (f["signal_peak_db"][:, None] / 20) / _peak(x))
        signal_power = _power(x)
        if cfg.background.enabled:
            # uniform white noise with standard deviation noise_level (as the published code adds;
            # its spectrum is as flat as Gaussian noise's, and it is cheaper to draw)
            half_width = math.sqrt(3.0) * f["noise_level"][:, None]
            noise = torch.addcmul(-half_width, rng.uniform((n, N)), 2 * half_width)
            f["snr_db"] = 10 * torch.log10(signal_power / _power(noise).clamp_min(1e-30))
            x.add_(noise)
        else:
            f["snr_db"] = torch.full_like(signal_power, math.inf)
        if cfg.peak_normalize:
            x.div_(_peak(x))
        f["rms_db"] = 10 * torch.log10(_power(x).clamp_min(1e-30))
        return x

    def _compose(self, x: torch.Tensor, f: dict[str, torch.Tensor], event_rms: torch.Tensor,
                 rng: Randomness) -> torch.Tensor:
        """The scene's further sources, distances and room on top of the main source ``x`` (n, N).

        Every further slot is rendered like the main source (source, events, transients, low-pass of
        the clip), for the clips where it sounds, and scaled so that its loudest event is
        ``scene_level_db`` relative to the main source's.  Each source then reaches the microphone
        directly, with amplitude ``reference / distance`` and air absorption (a zero-phase low-pass,
        -``absorption_db * distance * (f / 8 kHz)^2`` dB), while the room adds a diffuse reverberant
        field: the emitted sources' sum convolved with a unit-energy impulse response, at amplitude
        ``reference / critical_distance`` whatever the distance (Sabine's diffuse field), so that the
        direct-to-reverberant ratio is ``drr_db = 20 log10(critical_distance / distance)``.  Both
        paths are one linear convolution each (zero-padded FFTs); the tail past the clip is cut.
        """
        cfg = self.config
        n, N, sr = x.shape[0], x.shape[1], cfg.sample_rate
        parts = [(torch.arange(n, device=self.device), 0, x, torch.ones(n, device=self.device))]
        if self.slots > 1:
            slot_keys = [k for k in f if f"scene_{k}" in f]
            f["scene_event_level_db"][:, 0] = f["event_level_db"]
            loudest = event_rms.amax(1)
            for s in range(1, self.slots):
                idx = (f["scene_count"] > s).nonzero()[:, 0]
                if len(idx) == 0:
                    continue
                fs = {k: v[idx] for k, v in f.items() if not k.startswith("scene_")}
                fs.update({k: f[f"scene_{k}"][idx, s] for k in slot_keys})
                xs = torch.empty(len(idx), N, device=self.device)
                self._render_sources(xs, fs, rng)
                rms = self._apply_events(xs, fs)
                self._add_transients(xs, fs, rms, rng)
                f["scene_event_level_db"][idx, s] = fs["event_level_db"]
                gain = 10 ** (f["scene_level_db"][idx, s] / 20) * loudest[idx] / rms.amax(1).clamp_min(1e-12)
                parts.append((idx, s, xs, gain))
        if not (cfg.room.enabled or cfg.distance.enabled):
            for idx, _, xs, gain in parts[1:]:
                x.index_add_(0, idx, xs * gain[:, None])
            return x
        rows = torch.cat([p[0] for p in parts])
        slot = torch.cat([torch.full_like(p[0], p[1]) for p in parts])
        sig = torch.cat([p[2] * p[3][:, None] for p in parts])  # every sounding source, emitted (R, N)
        length = 0
        if cfg.room.enabled:
            longest = max(cfg.room.rt60[1], float(f["rt60"].nan_to_num(0.0).max()))
            length = int(math.ceil(longest * sr))  # the impulse response down by 60 dB
        M = fft_size(N + max(length, AIR_PAD))
        spec = torch.fft.rfft(sig, n=M)
        out = torch.zeros(n, M // 2 + 1, dtype=spec.dtype, device=self.device)
        if cfg.distance.enabled:
            dist = f["scene_distance"][rows, slot] if self.slots > 1 else f["distance"][rows]
            h = air_absorption_response(dist, M, sr, cfg.distance.absorption_db)
            out.index_add_(0, rows, spec * (h * (cfg.distance.reference / dist)[:, None]))
        else:
            out.index_add_(0, rows, spec)
        if cfg.room.enabled:
            ir = room_impulse_response(f["rt60"], length, sr, rng)  # (n, length), zero without a room
            room = (~torch.isnan(f["rt60"])).nonzero()[:, 0]
            if len(room):
                emitted = torch.zeros_like(out).index_add_(0, rows, spec)[room]
                gain = cfg.distance.reference / f["critical_distance"][room]
                out[room] += emitted * torch.fft.rfft(ir[room], n=M) * gain[:, None]
        return torch.fft.irfft(out, n=M)[:, :N].contiguous()

    def _render_sources(self, x: torch.Tensor, f: dict[str, torch.Tensor], rng: Randomness) -> None:
        """Each clip's source, RMS 1, low-passed where it has a cutoff, into ``x`` (n, N).

        Partials and spectra of all clips go into one spectrum, which is normalized (Parseval),
        filtered and inverted with one inverse FFT.  Every source is periodic over the clip, so filtering
        by the clip's own FFT is exact.
        """
        n, N, sr = x.shape[0], x.shape[1], self.config.sample_rate
        spec = torch.zeros(n, N // 2 + 1, dtype=torch.complex64, device=self.device)
        for code, _, source, scfg in self.sources:
            idx = (f["source"] == code).nonzero()[:, 0]
            if len(idx) == 0:
                continue
            out = source.render(scfg, _Rows(f, idx), N, sr, rng)
            if isinstance(out, Partials):
                place_partials(spec, idx, out, N, sr)
            elif out.is_complex():
                spec[idx] = out
            else:  # a time signal: its spectrum, to be normalized and filtered like the others
                spec[idx] = torch.fft.rfft(out, n=N)
        # (the norm of a complex tensor is ~50x slower on CPU than the norm of its real view)
        power = torch.linalg.vector_norm(torch.view_as_real(spec).reshape(n, -1), dim=1).square() * 2
        power = power - spec[:, 0].abs().square()
        if N % 2 == 0:
            power = power - spec[:, -1].abs().square()  # one-sided: all bins but DC, Nyquist count twice
        spec.mul_((N / power.clamp_min(1e-30).sqrt())[:, None])  # Parseval: RMS 1 over the clip
        rows = (~torch.isnan(f["cutoff"])).nonzero()[:, 0]
        if len(rows):
            spec[rows] = spec[rows] * butterworth2_response(f["cutoff"][rows], N, sr)
        torch.fft.irfft(spec, n=N, out=x)

    def _apply_events(self, x: torch.Tensor, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """Multiply the sources (n, N) by the sum of their events' ADSR envelopes, in place, and
        record every event's level, measured on the rendered event, relative to the loudest.

        Every breakpoint lies on the control grid, so the piecewise-linear envelopes are built
        exactly there from their slope changes (two cumulative sums) and interpolated linearly
        to audio rate.  An event's energy is the sum over control steps of the source's energy
        in the step times the mean square of the envelope's line over it, (a^2 + ab + b^2) / 3.
        """
        n, N = x.shape
        hop, steps = self.hop, self.control_steps
        env = self._envelopes(f, steps)  # (n, E, steps + 1)
        padded = F.pad(x, (0, steps * hop - N)) if steps * hop > N else x[:, : steps * hop]
        step_energy = torch.linalg.vector_norm(padded.reshape(n, steps, hop), dim=-1).double().square()
        a, b = env[..., :-1], env[..., 1:]
        energy = ((a * a + a * b + b * b) / 3 * step_energy[:, None, :]).sum(-1)
        level = 10 * torch.log10(energy.clamp_min(1e-30) / (f["event_duration"].double() * self.config.sample_rate))
        level = torch.where(torch.isnan(f["event_duration"]), torch.full_like(level, -math.inf), level)
        event_rms = (10 ** (level / 20)).float()  # absolute, before peak scaling
        level = (level - level.amax(1, keepdim=True)).float()
        f["event_level_db"] = torch.where(torch.isnan(f["event_duration"]), torch.full_like(level, math.nan), level)
        gain = env.sum(1).float()[:, None]
        x.mul_(F.interpolate(gain, size=steps * hop + 1, mode="linear", align_corners=True)[:, 0, :N])
        return event_rms

    def _envelopes(self, f: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
        """Every event's amplitude x ADSR envelope at the control points, (n, E, steps + 1), float64."""
        step = self.hop / self.config.sample_rate
        k0 = torch.round(f["event_onset"] / step)
        dur = torch.round(f["event_duration"] / step)
        ka = k0 + torch.round(f["event_attack"] * dur)
        kd = ka + torch.round(f["event_decay"] * dur)
        ke = k0 + dur
        kr = ke - torch.round(f["event_release"] * dur)
        amp = (10 ** (f["event_level_db"] / 20) / self.envelope_rms(f)).double()
        s = f["event_sustain"].double()
        up = amp / (ka - k0).double()
        down = amp * (1 - s) / (kd - ka).double().clamp_min(1)
        rel = amp * s / (ke - kr).double()
        where = torch.stack([k0, ka, kd, kr, ke], -1)  # (n, E, 5) breakpoints
        change = torch.stack([up, -up - down, down, -rel, rel], -1)  # slope changes there
        valid = ~torch.isnan(where) & ~torch.isnan(change)
        where = torch.where(valid, where, torch.zeros_like(where)).long().clamp_max(steps)
        change = torch.where(valid, change, torch.zeros_like(change))
        n, E = where.shape[:2]
        slope = torch.zeros(n, E, steps + 1, dtype=torch.float64, device=self.device)
        slope.scatter_add_(2, where, change).cumsum_(2)
        env = torch.zeros_like(slope)
        env[..., 1:] = slope[..., :-1].cumsum(2)
        return env.clamp_min_(0.0)

    @staticmethod
    def envelope_rms(f: dict[str, torch.Tensor]) -> torch.Tensor:
        """RMS of each event's ADSR envelope over the event (exact for the piecewise-linear shape)."""
        a, d, s, r = f["event_attack"], f["event_decay"], f["event_sustain"], f["event_release"]
        mean_sq = a / 3 + d * (1 + s + s * s) / 3 + s * s * (1 - a - d - r) + r * s * s / 3
        return mean_sq.clamp_min(1e-12).sqrt()

    def _add_transients(self, x: torch.Tensor, f: dict[str, torch.Tensor], event_rms: torch.Tensor,
                        rng: Randomness) -> None:
        """Add decaying white-noise bursts at event onsets, low-passed like their clip, in place."""
        tr = self.config.transient
        if not tr.enabled:
            return
        n, N, sr = x.shape[0], x.shape[1], self.config.sample_rate
        E = f["transient"].shape[1]
        T = int(math.ceil(tr.seconds[1] * sr))
        noise = rng.normal((n, E, T))
        if not f["transient"].any():
            return
        clip, slot = f["transient"].nonzero(as_tuple=True)  # only the bursts that exist
        j = torch.arange(T, device=self.device, dtype=torch.float32)
        length = (f["transient_seconds"][clip, slot] * sr)[:, None]
        burst = noise[clip, slot] * torch.exp(-5.0 * j / length.clamp_min(1.0)) * (j < length)  # -43 dB
        burst_rms = (burst.square().sum(-1, keepdim=True) / length.clamp_min(1.0)).sqrt().clamp_min(1e-12)
        target = (f["transient_level"][clip, slot] * event_rms[clip, slot])[:, None]
        burst = burst * (target / burst_rms)  # RMS over the burst = target
        cutoff = f["cutoff"][clip]
        L = T + _lowpass_tail(cutoff, sr)  # room for the low-pass tail of a burst (zero-padded FFT)
        rows = (~torch.isnan(cutoff)).nonzero()[:, 0]
        if len(rows):
            burst = F.pad(burst, (0, L - T))
            spec = torch.fft.rfft(burst[rows], n=L) * butterworth2_response(cutoff[rows], L, sr)
            burst[rows] = torch.fft.irfft(spec, n=L)
        onset = torch.round(f["event_onset"][clip, slot] * sr).long()[:, None]
        pos = onset + torch.arange(burst.shape[1], device=self.device)
        inside = pos < N
        x.view(-1).index_add_(0, (clip[:, None] * N + pos)[inside], burst[inside])


class _Rows(dict):
    """The factors of some clips, indexed on first use (a source reads only a few of them)."""

    def __init__(self, factors: dict[str, torch.Tensor], idx: torch.Tensor):
        super().__init__()
        self._factors, self._idx = factors, idx

    def __missing__(self, key: str) -> torch.Tensor:
        value = self[key] = self._factors[key][self._idx]
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._factors

    def get(self, key, default=None):
        return self[key] if key in self._factors else default

    def keys(self):
        return self._factors.keys()

    def items(self):
        return ((k, self[k]) for k in self._factors)

    def __iter__(self):
        return iter(self._factors)

    def __len__(self) -> int:
        return len(self._factors)


def _lowpass_tail(cutoff: torch.Tensor, sample_rate: int) -> int:
    """Samples after which the impulse response of the lowest cutoff's low-pass has decayed by
    more than 300 dB (its envelope falls as exp(-2 pi 0.707 fc t)), rounded up to 256."""
    lowest = torch.nan_to_num(cutoff, nan=math.inf).min().item()
    if not math.isfinite(lowest):
        return 0
    samples = 35.0 * sample_rate / (2 * math.pi * math.sqrt(0.5) * lowest)
    return int(math.ceil(samples / 256) * 256)


def _peak(x: torch.Tensor) -> torch.Tensor:
    """Largest absolute value of each row (amax and amin are vectorized reductions; abs().amax
    would allocate a copy and the infinity norm is far slower on CPU)."""
    return torch.maximum(x.amax(1, keepdim=True), -x.amin(1, keepdim=True)).clamp_min(1e-12)


def _power(x: torch.Tensor) -> torch.Tensor:
    """Mean square of each row."""
    return torch.linalg.vector_norm(x, dim=1).square() / x.shape[1]


@functools.lru_cache(maxsize=16)
def _half_tan(n_fft: int, device: str) -> torch.Tensor:
    """tan(w / 2) at the rfft bins w = 2 pi k / n_fft (clamped: infinite at Nyquist)."""
    w = torch.arange(n_fft // 2 + 1, device=device, dtype=torch.float32) * (math.pi / n_fft)
    return torch.tan(w).clamp_max(1e6)


def place_partials(spec: torch.Tensor, rows: torch.Tensor, partials: Partials, num_samples: int,
                   sample_rate: int) -> None:
    """Add sinusoids into rows of a one-sided spectrum (n, num_samples // 2 + 1), in place.

    Frequencies are rounded to the clip's FFT bins; those at or above Nyquist (and DC) are
    dropped, which makes every partial source band-limited.
    """
    freqs, amps, phases = partials
    bins = torch.round(freqs * num_samples / sample_rate).long()
    half = num_samples // 2
    keep = (bins >= 1) & (bins < half) & (freqs < sample_rate / 2) & (amps != 0)
    # x(t) = a sin(w t + phi) -> bin value a N/2 exp(i (phi - pi/2))
    values = torch.polar(amps * keep * (num_samples / 2), phases - math.pi / 2).to(spec.dtype)
    row = rows[:, None].expand_as(bins)
    spec.index_put_((row[keep], bins[keep]), values[keep], accumulate=True)


def butterworth2_response(cutoff: torch.Tensor, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Frequency response (m, n_fft//2+1) of 2nd-order Butterworth low-passes made by the bilinear
    transform with prewarping, i.e. the filters ``scipy.signal.butter(2, cutoff, fs=sample_rate)``
    designs.  With u = tan(w/2) / tan(pi cutoff / fs):  H = 1 / (1 - u^2 + j sqrt(2) u)."""
    t = _half_tan(n_fft, str(cutoff.device))
    u = t / torch.tan(math.pi * cutoff / sample_rate)[:, None]
    u2 = u * u
    den = 1 + u2 * u2  # |1 - u^2 + j sqrt(2) u|^2
    return torch.complex((1 - u2) / den, -math.sqrt(2) * u / den)
