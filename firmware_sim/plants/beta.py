"""A published plant for adaptive DBS: the delayed STN–GPe firing-rate model of Parkinsonian beta oscillations.

From the paper (Nevado-Holgado, Terry & Bogacz 2010, J Neurosci 30:12340, "Conditions for the generation of beta
oscillations in the subthalamic nucleus–globus pallidus network"): two populations, the subthalamic nucleus S
(excitatory) and the external globus pallidus G (inhibitory), each a firing rate in spikes/s,

    tau_S dS/dt = F_S( w_CS·C − w_GS·G(t − T_GS) ) − S
    tau_G dG/dt = F_G( w_SG·S(t − T_SG) − w_GG·G(t − T_GG) − w_XG·Str ) − G
    F(x) = M / (1 + (M − B)/B · exp(−4x/M))     (a sigmoid with F(0) = B, maximum M, slope 1 at M/2)

with the paper's time constants, delays and sigmoid ranges (tau_S 12.8 ms, tau_G 20 ms, T_SG = T_GS = 6 ms,
T_GG = 4 ms, M_S 300, B_S 17, M_G 400, B_G 75 spikes/s). The loop oscillates in the beta band when the STN→GPe and
GPe→STN couplings are strong enough (the paper's condition (1)), which is what the Parkinsonian state does.

Ours (not the paper's; docs/plants.md has the table):
* the weights and the constant cortical / striatal drives: w_GS = 6, w_SG = 10, w_GG = 2, w_CS·C = 261.5,
  w_XG·Str = 337.8 (an operating point S = 32, G = 35 spikes/s), chosen by a grid search so that the oscillating
  state comes close to the paper's Parkinsonian targets (its Table 5, from MPTP monkeys: STN 25.8 spikes/s mean,
  0.2–76.9 over the cycle; GPe 44.8, 20.7–117.7; 15 Hz) — ours: STN 29.8 (6.7–68), GPe 58 (18.5–126), 14.3 Hz.
  The paper fits its weights to those targets with its own method; ours are not its fitted values. A coupling
  scale `kappa` on w_GS and w_SG crosses the oscillation threshold between 0.4 and 0.5;
* a slow drift of that coupling (the states to detect and control): a two-regime telegraph process
  ("healthy" kappa_low = 0.4, "beta-prone" kappa_high = 1.0, mean dwell 45 s each) smoothed with a 5 s time
  constant, plus an Ornstein–Uhlenbeck jitter (sd 0.03, 20 s), in the spirit of the slow beta-modulation inputs of
  Fleming et al. 2020;
* white noise on the STN input (sd 15 in input units per 1 ms), so that the healthy regime shows small,
  noise-driven beta and the beta-prone one waxing and waning oscillations;
* DBS enters as a pulsatile excitatory input to the STN (the 2010 paper has no stimulation; population models of
  the subthalamo-pallidal loop add DBS to the STN's input, and Alavi et al. 2022, Sci Rep,
  doi:10.1038/s41598-022-10084-4, found that an excitatory one quenches beta where an inhibitory one does not):
  each delivered pulse adds dbs_gain · amplitude_ma · pulse_width_us / 60 µs to the STN input during one
  integration step (the 60 µs pulse is not resolved; its charge is kept). High-frequency trains drive the STN rate
  at the stimulation frequency, move it off the steep part of its sigmoid and so cut the loop gain: beta falls
  once the amplitude passes a threshold (about 1.5–1.75 mA at 130 Hz, 60 µs, in the beta-prone regime; 20 Hz
  trains barely act, 60 Hz halves beta);
* the LFP the classifier sees: −(S − its 1 s running mean) × gain (0.25 µV per spike/s on channel 0, falling with
  the contact's distance over the channels), plus per-channel white and 1/f measurement noise and a biphasic
  stimulation artefact per pulse; 8 channels at 1 kHz by default;
* the biomarker: the beta-band (13–30 Hz, a second-order band-pass) amplitude of the noise-free STN rate, smoothed
  over 0.4 s (as aDBS studies smooth beta), in spikes/s; the state is "beta_high" (1) when it is above
  `beta_threshold` (10 spikes/s; about 4–5 in the healthy regime, 23 in the beta-prone one), else
  "beta_low" (0, the target).

Integration: exponential Euler at the sample rate with an integer number of sub-steps (at least 1 kHz inside),
delays as ring buffers of past rates. All random draws are per integration step from seeded streams, so the
trajectory does not depend on how the caller splits it into blocks. No I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.generator import F32, one_pole

STATE_NAMES = ("beta_low", "beta_high")
REF_DT_S = 1e-3  # the integration step; the plant refuses rates that would need another (see __init__)
REF_PULSE_WIDTH_US = 60.0


@dataclass(frozen=True)
class BetaParams:
    """Nevado-Holgado et al. 2010's constants, and ours (see the module docstring); times in s, rates in spikes/s."""

    # the paper's
    tau_s_s: float = 12.8e-3
    tau_g_s: float = 20e-3
    t_sg_s: float = 6e-3
    t_gs_s: float = 6e-3
    t_gg_s: float = 4e-3
    m_s: float = 300.0
    b_s: float = 17.0
    m_g: float = 400.0
    b_g: float = 75.0
    # ours
    w_gs: float = 6.0
    w_sg: float = 10.0
    w_gg: float = 2.0
    cortical_drive: float = 261.5   # w_CS · C
    striatal_drive: float = 337.8   # w_XG · Str
    noise_sd: float = 15.0          # STN input noise per REF_DT_S step
    kappa_low: float = 0.4
    kappa_high: float = 1.0
    dwell_low_s: float = 45.0
    dwell_high_s: float = 45.0
    kappa_tau_s: float = 5.0
    kappa_jitter_sd: float = 0.03
    kappa_jitter_tau_s: float = 20.0
    dbs_gain: float = 250.0         # STN input per pulse of 1 mA × 60 µs, during one REF_DT_S step
    lfp_uv_per_hz: float = 0.25
    noise_uv: float = 1.0
    pink_uv: float = 1.5
    stim_artefact_uv_per_ma: float = 20.0
    beta_low_hz: float = 13.0
    beta_high_hz: float = 30.0
    beta_smooth_s: float = 0.4
    beta_threshold: float = 10.0    # biomarker above this: state "beta_high"


def _sigmoid_k(m: float, b: float) -> float:
    return (m - b) / b


class BetaPlant:
    """The STN–GPe beta plant; `step(n, delivered)` returns n × n_channels float32 µV. See the module docstring."""

    name = "beta"
    state_names: tuple[str, ...] = STATE_NAMES
    target_state = 0
    biomarker_unit = "spikes/s (STN beta amplitude)"

    def __init__(self, n_channels: int = 8, sample_rate_hz: float = 1000.0, seed: int = 0, *,
                 initial_state: int = 0, params: BetaParams | None = None) -> None:
        if n_channels <= 0 or not sample_rate_hz > 0:
            raise ValueError(f"need n_channels > 0 and sample_rate_hz > 0, got {n_channels}, {sample_rate_hz}")
        steps_per_sample = 1000.0 / float(sample_rate_hz)
        if steps_per_sample < 1.0 - 1e-9 or abs(steps_per_sample - round(steps_per_sample)) > 1e-9:
            # The DBS input is one 1 ms step per pulse into a saturating sigmoid: integrated at another step its
            # effect changes (a review measured 93 % beta suppression at 1 kHz, 69 % at 2 kHz, 25 % at 4 kHz).
            raise ValueError(f"the beta plant integrates in 1 ms steps, so its sample rate must be 1000 Hz or 1000 Hz "
                             f"divided by a whole number (500, 250, 200, ...), got {sample_rate_hz:g} Hz")
        if initial_state not in (0, 1):
            raise ValueError(f"initial_state must be 0 (healthy regime) or 1 (beta-prone), got {initial_state}")
        p = self.params = params or BetaParams()
        self.n_channels = int(n_channels)
        self.sample_rate_hz = float(sample_rate_hz)
        self.substeps = max(1, math.ceil(1000.0 / self.sample_rate_hz - 1e-9))
        self.dt_s = 1.0 / (self.sample_rate_hz * self.substeps)
        ss = np.random.SeedSequence(seed)
        # one stream per kind of draw, each drawn once per step: the draws do not depend on the block split
        noise_seed, regime_seed, jitter_seed, white_seed, pink_seed, layout_seed = ss.spawn(6)
        self._noise_rng = np.random.default_rng(noise_seed)
        self._regime_rng = np.random.default_rng(regime_seed)
        self._jitter_rng = np.random.default_rng(jitter_seed)
        self._white_rng = np.random.default_rng(white_seed)
        self._pink_rng = np.random.default_rng(pink_seed)
        layout = np.random.default_rng(layout_seed)
        # contacts along a lead: the first sees the STN best; gains fall with distance, with a little spread
        ch = np.arange(self.n_channels)
        self.channel_gain = np.asarray(np.exp(-ch / 3.0) * layout.uniform(0.85, 1.15, self.n_channels))
        self.artefact_gain = np.asarray(layout.uniform(0.5, 1.5, self.n_channels))
        self.noise_gain = np.asarray(layout.uniform(0.8, 1.2, self.n_channels))

        d = self.dt_s
        self._delay = {k: max(1, round(getattr(p, k) / d)) for k in ("t_sg_s", "t_gs_s", "t_gg_s")}
        self._ring = max(self._delay.values()) + 1
        s0, g0 = 32.0, 35.0  # the operating point the drives are set for
        self._s_hist = [s0] * self._ring
        self._g_hist = [g0] * self._ring
        self._pos = 0
        self._s = s0
        self._g = g0
        # the slow drift
        self.regime = int(initial_state)
        self.kappa = p.kappa_high if self.regime else p.kappa_low
        self._kappa_zi = np.asarray(self.kappa, dtype=np.float64)
        self._jitter_zi = np.zeros(())
        # stimulation
        self._stim_phase = 0.0
        self._stim_tail = np.zeros(self.n_channels)
        self._charge_uc = 0.0
        # LFP: running mean of S (1 s), 1/f measurement noise, biomarker filter state
        fs = self.sample_rate_hz
        self._mean_a = math.exp(-1.0 / (1.0 * fs))
        self._mean_zi = np.asarray(s0, dtype=np.float64)
        self._pink_a = math.exp(-2 * math.pi * 2.0 / fs)
        self._pink_zi = np.zeros(self.n_channels)
        f0 = math.sqrt(p.beta_low_hz * p.beta_high_hz)
        q = f0 / (p.beta_high_hz - p.beta_low_hz)
        w0 = 2 * math.pi * f0 / fs
        alpha = math.sin(w0) / (2 * q)
        a0 = 1 + alpha
        self._bp = (alpha / a0, -alpha / a0, -2 * math.cos(w0) / a0, (1 - alpha) / a0)  # b0, b2, a1, a2
        self._bp_x = [0.0, 0.0]
        self._bp_y = [0.0, 0.0]
        self._pow_a = math.exp(-1.0 / (p.beta_smooth_s * fs))
        self._pow = 0.0
        self._time_s = 0.0

    # --- what evaluation reads ----------------------------------------------------------------------------------
    @property
    def biomarker(self) -> float:
        """The STN's beta amplitude in spikes/s (band-passed, smoothed over beta_smooth_s, noise-free)."""
        return math.sqrt(2.0 * self._pow)

    @property
    def state(self) -> int:
        return 1 if self.biomarker > self.params.beta_threshold else 0

    @property
    def in_target(self) -> bool:
        return self.state == self.target_state

    @property
    def charge_delivered_uc(self) -> float:
        """Charge per phase summed over the pulses delivered so far, in µC."""
        return self._charge_uc

    @property
    def time_s(self) -> float:
        return self._time_s

    @property
    def truth(self) -> dict[str, float]:
        """Biomarker, coupling scale, regime (0 healthy, 1 beta-prone) and the two rates, now."""
        return {"biomarker": self.biomarker, "kappa": self.kappa, "regime": float(self.regime),
                "stn_rate_hz": self._s, "gpe_rate_hz": self._g}

    @property
    def stn_rate_hz(self) -> float:
        return self._s

    @property
    def gpe_rate_hz(self) -> float:
        return self._g

    # --- the model ----------------------------------------------------------------------------------------------
    def _kappa_path(self, n_steps: int) -> npt.NDArray[np.float64]:
        """The coupling scale for the next n_steps integration steps (telegraph regime, smoothed, plus OU)."""
        p = self.params
        dt = self.dt_s
        u = self._regime_rng.random(n_steps)
        target = np.empty(n_steps)
        regime = self.regime
        p_up = 1.0 - math.exp(-dt / p.dwell_low_s)
        p_down = 1.0 - math.exp(-dt / p.dwell_high_s)
        # flips are rare (one per ~45 s): find them without a per-step loop
        i = 0
        while i < n_steps:
            prob = p_down if regime else p_up
            hits = np.nonzero(u[i:] < prob)[0]
            j = n_steps if len(hits) == 0 else i + int(hits[0])
            target[i:j] = p.kappa_high if regime else p.kappa_low
            if j < n_steps:
                regime = 1 - regime
                target[j] = p.kappa_high if regime else p.kappa_low
                j += 1
            i = j
        self.regime = regime
        a = math.exp(-dt / p.kappa_tau_s)
        smooth, self._kappa_zi = one_pole(target, a, 1 - a, self._kappa_zi)
        aj = math.exp(-dt / p.kappa_jitter_tau_s)
        white = self._jitter_rng.standard_normal(n_steps)
        jitter, self._jitter_zi = one_pole(white, aj, p.kappa_jitter_sd * math.sqrt(1 - aj * aj), self._jitter_zi)
        return np.asarray(smooth + jitter, dtype=np.float64)

    def _pulses(self, n_steps: int, stim: StimParams | None) -> npt.NDArray[np.float64]:
        """Per integration step: 1 where a stimulation pulse falls, else 0."""
        out = np.zeros(n_steps)
        if stim is None or stim.amplitude_ma <= 0 or stim.frequency_hz <= 0 or stim.pulse_width_us <= 0:
            return out
        ph = self._stim_phase + np.arange(1, n_steps + 1) * stim.frequency_hz * self.dt_s
        prev = np.concatenate([[self._stim_phase], ph[:-1]])
        out[np.floor(ph) > np.floor(prev)] = 1.0
        self._stim_phase = float(ph[-1] % 1.0)
        return out

    def step(self, n_samples: int, delivered: StimParams | None) -> F32:
        """Advance by n_samples / sample_rate_hz s under `delivered` (None: off); the LFP in µV."""
        n = int(n_samples)
        if n <= 0:
            return np.zeros((0, self.n_channels), dtype=np.float32)
        p = self.params
        k = self.substeps
        n_steps = n * k
        dt = self.dt_s
        kappa = self._kappa_path(n_steps)
        pulses = self._pulses(n_steps, delivered)
        scale = REF_DT_S / dt
        drive = self.params.noise_sd * math.sqrt(scale) * self._noise_rng.standard_normal(n_steps)
        drive += p.cortical_drive
        if delivered is not None and pulses.any():
            per_pulse = p.dbs_gain * delivered.amplitude_ma * delivered.pulse_width_us / REF_PULSE_WIDTH_US
            drive += pulses * per_pulse * scale
            self._charge_uc += float(pulses.sum()) * delivered.amplitude_ma * delivered.pulse_width_us / 1000.0
        s_rate = self._integrate(drive.tolist(), kappa.tolist(), k)
        self.kappa = float(kappa[-1])
        s_arr = np.asarray(s_rate, dtype=np.float64)
        self._biomarker_update(s_rate)
        self._time_s += n / self.sample_rate_hz
        return self._lfp(s_arr, pulses.reshape(n, k).max(axis=1), delivered)

    def _integrate(self, drive: list[float], kappa: list[float], k: int) -> list[float]:
        """Exponential Euler over the steps; returns S at the end of each output sample (every k-th step)."""
        p = self.params
        dt = self.dt_s
        a_s = math.exp(-dt / p.tau_s_s)
        a_g = math.exp(-dt / p.tau_g_s)
        m_s, m_g = p.m_s, p.m_g
        k_s, k_g = _sigmoid_k(p.m_s, p.b_s), _sigmoid_k(p.m_g, p.b_g)
        c4s, c4g = -4.0 / m_s, -4.0 / m_g
        w_gs, w_sg, w_gg, str_drive = p.w_gs, p.w_sg, p.w_gg, p.striatal_drive
        ring = self._ring
        d_sg, d_gs, d_gg = self._delay["t_sg_s"], self._delay["t_gs_s"], self._delay["t_gg_s"]
        sh, gh = self._s_hist, self._g_hist
        pos = self._pos
        s, g = self._s, self._g
        exp = math.exp
        out: list[float] = []
        for i in range(len(drive)):
            kap = kappa[i]
            x_s = drive[i] - kap * w_gs * gh[(pos - d_gs) % ring]
            x_g = kap * w_sg * sh[(pos - d_sg) % ring] - w_gg * gh[(pos - d_gg) % ring] - str_drive
            # clamp the exponent: a strong pulse only saturates the sigmoid
            f_s = m_s / (1.0 + k_s * exp(max(-50.0, min(50.0, c4s * x_s))))
            f_g = m_g / (1.0 + k_g * exp(max(-50.0, min(50.0, c4g * x_g))))
            s = a_s * s + (1.0 - a_s) * f_s
            g = a_g * g + (1.0 - a_g) * f_g
            pos = (pos + 1) % ring
            sh[pos] = s
            gh[pos] = g
            if (i + 1) % k == 0:
                out.append(s)
        self._pos, self._s, self._g = pos, s, g
        return out

    def _biomarker_update(self, s_rate: list[float]) -> None:
        b0, b2, a1, a2 = self._bp
        x1, x2 = self._bp_x
        y1, y2 = self._bp_y
        pa = self._pow_a
        pw = self._pow
        for x in s_rate:
            y = b0 * x + b2 * x2 - a1 * y1 - a2 * y2
            x2, x1 = x1, x
            y2, y1 = y1, y
            pw = pa * pw + (1.0 - pa) * y * y
        self._bp_x, self._bp_y, self._pow = [x1, x2], [y1, y2], pw

    def _lfp(self, s_rate: npt.NDArray[np.float64], pulse_at: npt.NDArray[np.float64],
             delivered: StimParams | None) -> F32:
        p = self.params
        n = len(s_rate)
        mean, self._mean_zi = one_pole(s_rate, self._mean_a, 1 - self._mean_a, self._mean_zi)
        signal = -(s_rate - mean) * p.lfp_uv_per_hz
        white = self._white_rng.standard_normal((n, self.n_channels))
        pink_in = self._pink_rng.standard_normal((n, self.n_channels))
        pink, self._pink_zi = one_pole(pink_in, self._pink_a, math.sqrt(1 - self._pink_a ** 2), self._pink_zi)
        out = signal[:, None] * self.channel_gain[None, :] \
            + (p.noise_uv * white + p.pink_uv * pink) * self.noise_gain[None, :]
        if np.any(self._stim_tail):
            out[0] += self._stim_tail
            self._stim_tail = np.zeros(self.n_channels)
        if delivered is not None and pulse_at.any():
            height = p.stim_artefact_uv_per_ma * delivered.amplitude_ma * delivered.pulse_width_us / REF_PULSE_WIDTH_US
            for i in np.nonzero(pulse_at)[0]:
                out[i] -= height * self.artefact_gain
                if i + 1 < n:
                    out[i + 1] += 0.6 * height * self.artefact_gain
                else:
                    self._stim_tail = 0.6 * height * self.artefact_gain
        return np.asarray(out, dtype=np.float32)

    # a SampleSource for the simulated board
    def read(self, n_samples: int, stim: StimParams | None) -> F32:
        return self.step(n_samples, stim)


__all__ = ["STATE_NAMES", "BetaParams", "BetaPlant"]
