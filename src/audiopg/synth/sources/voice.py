"""A source-filter voice: a glottal pulse train through moving formant resonators, with fricatives and stops
between voiced parts, filtered frame-wise (overlap-add) and circularly over the clip (docs/world.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from audiopg.core.config import check_interval, check_probability, check_range
from audiopg.core.errors import ConfigError
from audiopg.synth.registry import Source, check_common

# Peterson & Barney (1952), adult male averages: F1, F2, F3 in Hz (ARPAbet names)
VOWEL_FORMANTS: dict[str, tuple[float, float, float]] = {
    "iy": (270.0, 2290.0, 3010.0),  # heed
    "ih": (390.0, 1990.0, 2550.0),  # hid
    "eh": (530.0, 1840.0, 2480.0),  # head
    "ae": (660.0, 1720.0, 2410.0),  # had
    "aa": (730.0, 1090.0, 2440.0),  # hod
    "ao": (570.0, 840.0, 2410.0),  # hawed
    "uh": (440.0, 1020.0, 2240.0),  # hood
    "uw": (300.0, 870.0, 2240.0),  # who'd
    "ah": (640.0, 1190.0, 2390.0),  # hud
    "er": (490.0, 1350.0, 1690.0),  # heard
}
VOWELS = tuple(VOWEL_FORMANTS)
UPPER_FORMANTS = (3300.0, 3750.0)  # F4, F5 (male)
BANDWIDTHS = (70.0, 90.0, 150.0, 200.0, 250.0)  # Hz, F1..F5
CONSONANTS = ("none", "s", "sh", "f", "stop")
# noise shaping of the consonants: resonance centre and bandwidth in Hz (peak gain 1)
CONSONANT_FILTERS = {"none": (4000.0, 6000.0), "s": (5000.0, 2000.0), "sh": (2800.0, 1200.0),
                     "f": (4000.0, 6000.0), "stop": (2000.0, 3000.0)}
RAMP = 0.010  # s: voicing and frication on- and offsets
BURST = 0.008  # s: decay time constant of a stop burst
FRICATION_DB = -6.0  # frication noise power relative to the pulses'
FRAME_SECONDS = 0.032


@dataclass(frozen=True)
class VoiceConfig:
    enabled: bool = True  # let clips use this source
    weight: float = 1.0  # relative chance among enabled sources
    f0: tuple[float, float] = (80.0, 320.0)  # mean fundamental over the clip in Hz, log-uniform
    glide: tuple[float, float] = (-7.0, 5.0)  # intonation: f0 change from the clip's start to its end, semitones
    jitter: tuple[float, float] = (0.0, 0.02)  # relative standard deviation of every period
    shimmer: tuple[float, float] = (0.0, 0.1)  # relative standard deviation of every pulse's amplitude
    breathiness: tuple[float, float] = (-40.0, -15.0)  # aspiration noise relative to the pulses, dB
    tract_scale: tuple[float, float] = (0.9, 1.3)  # formants x this (vocal tract length)
    vowels: tuple[str, ...] = VOWELS  # vowels to choose from
    syllables: tuple[int, int] = (2, 16)  # syllables per clip
    consonants: tuple[str, ...] = ("s", "sh", "f", "stop")  # consonant types to choose from
    consonant_probability: float = 0.6  # chance that a syllable starts with a consonant
    consonant_fraction: tuple[float, float] = (0.15, 0.4)  # share of a syllable its consonant takes
    formants: int = 5  # formant resonators (3-5)

    @property
    def max_syllables(self) -> int:
        return int(self.syllables[1])


class Voice(Source):
    name = "voice"
    config_cls = VoiceConfig
    factor_fill = {"f0": math.nan, "f0_glide": math.nan, "f0_start": math.nan, "f0_end": math.nan,
                   "jitter": math.nan, "shimmer": math.nan, "breathiness": math.nan, "tract_scale": math.nan,
                   "syllables": -1, "vowels": -1, "consonants": -1, "consonant_fraction": math.nan,
                   "voiced_fraction": math.nan}
    categories = {"vowels": VOWELS, "consonants": CONSONANTS}

    def check(self, cfg, world, key):
        check_common(key, cfg)
        check_interval(f"{key}.f0", cfg.f0, 20.0, 2000.0)
        check_interval(f"{key}.glide", cfg.glide, -24.0, 24.0)
        if cfg.f0[1] * 2 ** (max(abs(cfg.glide[0]), abs(cfg.glide[1])) / 12) >= 0.25 * world.sample_rate:
            raise ConfigError(f"{key}.f0", "the highest f0 of a glide must stay below a quarter of the sample rate")
        check_interval(f"{key}.jitter", cfg.jitter, 0.0, 0.2)
        check_interval(f"{key}.shimmer", cfg.shimmer, 0.0, 1.0)
        check_interval(f"{key}.breathiness", cfg.breathiness, -120.0, 20.0)
        check_interval(f"{key}.tract_scale", cfg.tract_scale, 0.5, 2.0)
        check_interval(f"{key}.syllables", cfg.syllables, 1, 256)
        check_probability(f"{key}.consonant_probability", cfg.consonant_probability)
        check_interval(f"{key}.consonant_fraction", cfg.consonant_fraction, 0.0, 0.9)
        check_range(f"{key}.formants", cfg.formants, 3, 5)
        for name, allowed, got in (("vowels", VOWELS, cfg.vowels), ("consonants", CONSONANTS[1:], cfg.consonants)):
            if not got and name == "vowels":
                raise ConfigError(f"{key}.vowels", "needs at least one vowel")
            for v in got:
                if v not in allowed:
                    raise ConfigError(f"{key}.{name}", f"unknown {name[:-1]} {v!r} (known: {', '.join(allowed)})")
        top = max(max(VOWEL_FORMANTS[v][2] for v in cfg.vowels), *UPPER_FORMANTS[: max(0, cfg.formants - 3)])
        if top * cfg.tract_scale[1] >= 0.45 * world.sample_rate:
            raise ConfigError(f"{key}.tract_scale", "the highest formant must stay below 0.45 x the sample rate "
                              "(fewer formants or a smaller tract_scale)")

    def sample(self, cfg, n, rng):
        device = rng.device
        K = cfg.max_syllables
        vowel_codes = torch.tensor([VOWELS.index(v) for v in cfg.vowels], device=device)
        f0 = rng.log_uniform(n, *cfg.f0)
        glide = rng.uniform(n, *cfg.glide)
        jitter = rng.uniform(n, *cfg.jitter)
        shimmer = rng.uniform(n, *cfg.shimmer)
        breathiness = rng.uniform(n, *cfg.breathiness)
        scale = rng.uniform(n, *cfg.tract_scale)
        count = rng.integers(n, *cfg.syllables)
        vowels = vowel_codes[rng.integers((n, K), 0, len(vowel_codes) - 1)]
        has = rng.uniform((n, K)) < (cfg.consonant_probability if cfg.consonants else 0.0)
        kinds = torch.tensor([CONSONANTS.index(c) for c in cfg.consonants] or [0], device=device)
        kind = kinds[rng.integers((n, K), 0, len(kinds) - 1)]
        fraction = rng.uniform(n, *cfg.consonant_fraction)
        active = torch.arange(K, device=device)[None, :] < count[:, None]
        vowels = torch.where(active, vowels, -1)
        consonants = torch.where(active, torch.where(has, kind, 0), -1)
        ratio = torch.exp2(glide / 12)
        start = f0 * torch.where(glide.abs() > 1e-6, torch.log(ratio) / (ratio - 1), torch.ones_like(f0))
        table = torch.tensor([VOWEL_FORMANTS[v] for v in VOWELS], device=device)
        last = vowels.gather(1, (count - 1)[:, None])[:, 0]
        voiced = 1 - fraction * (consonants > 0).sum(1) / count
        return {
            "f0": f0, "f0_glide": glide, "f0_start": start, "f0_end": start * ratio,
            "jitter": jitter, "shimmer": shimmer, "breathiness": breathiness, "tract_scale": scale,
            "syllables": count, "vowels": vowels, "consonants": consonants, "consonant_fraction": fraction,
            "formant_start": table[vowels[:, 0]] * scale[:, None], "formant_end": table[last] * scale[:, None],
            "voiced_fraction": voiced,
        }

    # ------------------------------------------------------------------ rendering
    def render(self, cfg, factors, num_samples, sample_rate, rng):
        f0 = factors["f0"]
        m, N, device = f0.shape[0], num_samples, f0.device
        T = N / sample_rate
        W = 1 << max(4, round(math.log2(FRAME_SECONDS * sample_rate)))  # frame length, a power of 2
        hop = W // 2
        frames = -(-N // hop)
        Np = frames * hop  # the clip padded to whole hops
        K = factors["vowels"].shape[1]
        count = factors["syllables"].clamp(1, K).long()
        syl = T / count.double()  # syllable length (m,)
        cons = factors["consonants"].clamp_min(0).long()  # (m, K), 0 = none
        clen = factors["consonant_fraction"].double() * syl  # consonant length (m,)

        # ---- excitations in the time domain: pulses, aspiration, frication (random draws first, fixed shapes)
        ratio = torch.exp2(factors["f0_glide"].double() / 12)
        a = f0.double() * torch.where(ratio != 1, torch.log(ratio) / (ratio - 1), torch.ones_like(ratio))  # f0 at 0
        b = torch.log(ratio) / T  # f0(t) = a e^(b t)
        cycles = f0.double() * T  # the phase advance over the clip
        P = int(math.ceil(float(cycles.max()))) + 2
        offset = rng.uniform(m)  # phase of the first pulse, in cycles
        jitter_draw = rng.normal((m, P))
        shimmer_draw = rng.normal((m, P))
        aspiration = rng.normal((m, N))
        frication = rng.normal((m, N))

        k = torch.arange(P, device=device, dtype=torch.float64)[None, :] + offset.double()[:, None]
        flat = b.abs() < 1e-12
        tk = torch.where(flat[:, None], k / a[:, None],
                         torch.log1p(b[:, None] * k / a[:, None]) / torch.where(flat, 1.0, b)[:, None])
        tk = torch.nan_to_num(tk, nan=2 * T, posinf=2 * T, neginf=2 * T)  # cycles past the contour's end
        f0k = a[:, None] * torch.exp(b[:, None] * tk.clamp_max(T))
        tk = tk + factors["jitter"].double()[:, None] / math.sqrt(2) * jitter_draw.double() / f0k
        valid = (tk >= 0) & (tk < T) & (k < cycles[:, None])
        amp = (1 + factors["shimmer"][:, None] * shimmer_draw).clamp_min(0) * torch.sqrt(sample_rate / f0k).float()
        t = torch.arange(N, device=device, dtype=torch.float32) / sample_rate  # float32 is ample for gates
        syl32, clen32 = syl.float(), clen.float()
        seg, u = self._segments(t, syl32, count)
        voicing, fric = self._gates(seg, u, syl32, clen32, cons, count)
        pulse_seg, pulse_u = self._segments(tk.clamp(0, T - 1e-6).float(), syl32, count)
        pulse_v, _ = self._gates(pulse_seg, pulse_u, syl32, clen32, cons, count)
        pulses = self._bandlimited_impulses(tk * sample_rate, amp * pulse_v * valid, N)
        power = 0.9  # the pulses' mean power per sample (band edge 0.9 x Nyquist, amplitude^2 ~ fs / f0)
        asp_gain = math.sqrt(power) * 10 ** (factors["breathiness"][:, None] / 20)
        aspiration = aspiration * voicing * asp_gain
        frication = frication * fric * math.sqrt(power) * 10 ** (FRICATION_DB / 20)

        # ---- frame-wise filtering and overlap-add
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(W, device=device) / W)  # periodic Hann

        def frames_of(x):
            x = torch.nn.functional.pad(x, (0, Np - N))
            x = torch.cat([x, x[:, :W]], 1)
            return torch.fft.rfft(x.unfold(1, W, hop)[:, :frames] * window, n=2 * W)

        centre = (torch.arange(frames, device=device, dtype=torch.float64) * hop + W / 2) / sample_rate
        centre = torch.remainder(centre, T)[None, :].expand(m, -1)
        formants = self._formant_tracks(factors, centre, syl, clen, cons, count, cfg.formants)  # (m, F, NF)
        bins = W + 1
        w = math.pi * torch.arange(bins, device=device, dtype=torch.float64) / W  # rad / sample at n_fft 2W
        z1 = torch.polar(torch.ones_like(w), -w).to(torch.complex64)  # e^-jw
        trig = torch.stack([torch.cos(w), torch.sin(w), torch.cos(2 * w), torch.sin(2 * w)]).float()
        gain = torch.ones(m, frames, 1, device=device)
        den = torch.ones(m, frames, bins, dtype=torch.complex64, device=device)
        for i in range(cfg.formants):  # 3-5 resonators in cascade: one product of denominators
            bw = BANDWIDTHS[i] * factors["tract_scale"][:, None, None]
            A, d = _resonator_parts(formants[..., i, None].float(), bw, trig, sample_rate)
            gain, den = gain * A, den * d
        tract = gain / den
        A, d = _resonator_parts(torch.zeros_like(f0)[:, None], (2 * a).float()[:, None], trig, sample_rate)
        glottal = A / d * (1 - z1)  # the glottal pulse's low-pass and the lips' radiation
        glottal = glottal / glottal.abs().square().mean(-1, keepdim=True).sqrt()  # unit mean power gain
        lips = (1 - z1) / math.sqrt(2)
        fseg, fu = self._segments(centre, syl, count)
        here = cons.gather(1, fseg)
        after = cons.gather(1, (fseg + 1).clamp_max(count[:, None] - 1))
        kind = torch.where(here > 0, here, after)  # the consonant this frame's frication belongs to
        fc = torch.tensor([CONSONANT_FILTERS[c][0] for c in CONSONANTS], device=device)
        fb = torch.tensor([CONSONANT_FILTERS[c][1] for c in CONSONANTS], device=device)
        A, d = _resonator_parts(fc.clamp_max(0.4 * sample_rate)[:, None], fb[:, None], trig, sample_rate)
        shapes = A / d
        shapes = shapes / shapes.abs().amax(-1, keepdim=True)  # (consonants, bins), peak gain 1
        spec = (frames_of(pulses) * glottal[:, None, :] + frames_of(aspiration) * lips) * tract
        spec += frames_of(frication) * shapes[kind]
        out = torch.fft.irfft(spec, n=2 * W).reshape(m, frames, 4, hop)  # (m, F, 2W): four hops each
        y = torch.zeros(m, frames + 3, hop, device=device)
        for q in range(4):  # overlap-add: frame j's q-th hop lands on hop j + q
            y[:, q: q + frames] += out[:, :, q]
        y = y.reshape(m, -1)
        wrapped = y[:, :Np].clone()
        tail = y[:, Np:]
        while tail.shape[1]:  # circular: what runs past the end comes in at the start
            wrapped[:, : min(Np, tail.shape[1])] += tail[:, :Np]
            tail = tail[:, Np:]
        return wrapped[:, :N]

    @staticmethod
    def _segments(t: torch.Tensor, syl: torch.Tensor, count: torch.Tensor):
        """Syllable index (long) and seconds into it of times ``t`` ((N,) or (m, N) seconds)."""
        seg = torch.minimum(torch.floor(t / syl[:, None]).long(), (count - 1)[:, None])
        return seg, t - seg * syl[:, None]

    @staticmethod
    def _gates(seg, u, syl, clen, cons, count):
        """Voicing and frication gates (0..1) at the given syllable positions."""
        kind = cons.gather(1, seg)
        has = kind > 0
        nxt = seg + 1
        next_has = (nxt < count[:, None]) & (cons.gather(1, nxt.clamp_max(cons.shape[1] - 1)) > 0)
        clen = clen[:, None]
        v_in = torch.where(has, ((u - clen) / RAMP).clamp(0, 1), torch.ones_like(u))
        v_out = torch.where(next_has, ((syl[:, None] - u) / RAMP).clamp(0, 1), torch.ones_like(u))
        voicing = torch.minimum(v_in, v_out)
        trapezoid = torch.minimum(u / RAMP, (clen - u) / RAMP).clamp(0, 1)
        burst_at = 0.6 * clen
        burst = torch.where((u >= burst_at) & (u < clen), torch.exp(-(u - burst_at) / BURST), torch.zeros_like(u))
        fric = torch.where(kind == CONSONANTS.index("stop"), burst, trapezoid) * has
        return voicing, fric

    @staticmethod
    def _formant_tracks(factors, times, syl, clen, cons, count, nf):
        """F1..F(nf) (m, F, nf) at ``times`` (m, F): vowel targets held over the last 70 % of every
        vowel, linear moves in between."""
        m, K = cons.shape
        device = times.device
        table = torch.tensor([VOWEL_FORMANTS[v] + UPPER_FORMANTS for v in VOWELS], device=device, dtype=torch.float64)
        vowels = factors["vowels"].long()
        last = vowels.gather(1, (count - 1)[:, None])
        vowels = torch.where(vowels >= 0, vowels, last)  # silent slots repeat the last vowel
        target = table[vowels][..., :nf] * factors["tract_scale"].double()[:, None, None]  # (m, K, nf)
        k = torch.arange(K, device=device, dtype=torch.float64)[None, :]
        start = k * syl[:, None] + torch.where(cons > 0, clen[:, None], torch.zeros_like(k))
        hold = start + 0.3 * ((k + 1) * syl[:, None] - start)
        end = (k + 1) * syl[:, None]
        T = float((syl * count).max())
        beyond = k >= count[:, None]  # knots of silent slots lie past the clip, in order
        hold = torch.where(beyond, T + 1 + 2 * k, hold)
        end = torch.where(beyond, T + 2 + 2 * k, end)
        knots = torch.stack([hold, end], -1).reshape(m, 2 * K)
        values = target.repeat_interleave(2, dim=1)  # (m, 2K, nf)
        j = torch.searchsorted(knots.contiguous(), times.contiguous()).clamp(1, 2 * K - 1)
        t0, t1 = knots.gather(1, j - 1), knots.gather(1, j)
        wgt = ((times - t0) / (t1 - t0)).clamp(0, 1)[..., None]
        v0 = values.gather(1, (j - 1)[..., None].expand(-1, -1, nf))
        v1 = values.gather(1, j[..., None].expand(-1, -1, nf))
        return v0 + wgt * (v1 - v0)

    @staticmethod
    def _bandlimited_impulses(position: torch.Tensor, amp: torch.Tensor, num_samples: int, half: int = 16,
                              edge: float = 0.9) -> torch.Tensor:
        """Impulses of ``amp`` at fractional sample ``position`` (m, P), each a Blackman-windowed sinc
        of 2 ``half`` taps with its band edge at ``edge`` x Nyquist, added circularly into (m, N)."""
        m = position.shape[0]
        base = torch.floor(position)
        taps = torch.arange(-half + 1, half + 1, device=position.device, dtype=torch.float64)
        n = base[..., None] + taps  # (m, P, 2 half)
        x = n - position[..., None]
        window = 0.42 + 0.5 * torch.cos(math.pi * x / half) + 0.08 * torch.cos(2 * math.pi * x / half)
        h = (edge * torch.sinc(edge * x) * window * (x.abs() < half)).float() * amp[..., None]
        out = torch.zeros(m, num_samples, device=position.device)
        idx = torch.remainder(n.long(), num_samples).reshape(m, -1)
        return out.scatter_add_(1, idx, h.reshape(m, -1))


def _resonator_parts(freq: torch.Tensor, bandwidth: torch.Tensor, trig: torch.Tensor, sample_rate: int):
    """Klatt's resonator A / (1 - B z^-1 - C z^-2) (unit gain at 0 Hz) as its gain A and its denominator
    (complex64) at the frequencies w where ``trig`` = (cos w, sin w, cos 2w, sin 2w); freq and bandwidth
    broadcast against them (their last dimension is 1)."""
    C = -torch.exp(-2 * math.pi * bandwidth / sample_rate)
    B = 2 * torch.exp(-math.pi * bandwidth / sample_rate) * torch.cos(2 * math.pi * freq / sample_rate)
    re = 1 - B * trig[0] - C * trig[2]
    im = B * trig[1] + C * trig[3]  # z^-1 = cos w - j sin w
    return 1 - B - C, torch.complex(re, im)
