//! Learning-rate schedules as pure functions of the optimiser step, so a resumed run needs only the step count.

/// The shape of the learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decay {
    /// Stay at the peak rate.
    Constant,
    /// Fall linearly to zero at the last step (HF `get_linear_schedule_with_warmup`).
    Linear,
    /// Half a cosine down to zero at the last step (HF `get_cosine_schedule_with_warmup`).
    Cosine,
}

/// Linear warm-up from 0 to `peak` over `warmup_steps`, then `decay` over the remaining steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Optimiser steps of linear warm-up.
    pub warmup_steps: u64,
    /// Total optimiser steps of the run.
    pub total_steps: u64,
    /// What happens after warm-up.
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate of the optimiser step with 0-based index `step`. HF's warm-up gives the first step a
    /// rate of 0 (a wasted step); here step `i` of the warm-up uses `(i + 1) / warmup_steps · peak`.
    pub fn lr(&self, step: u64) -> f64 {
        let step = step + 1;
        if step <= self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => self.peak * (1.0 - progress).max(0.0),
            Decay::Cosine => self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay() {
        let s = Schedule {
            peak: 1.0,
            warmup_steps: 4,
            total_steps: 12,
            decay: Decay::Linear,
        };
        let lrs: Vec<f64> = (0..12).map(|i| s.lr(i)).collect();
        assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert!((lrs[7] - 0.5).abs() < 1e-12);
        assert!(lrs[11].abs() < 1e-12);
        assert!(lrs.windows(2).skip(4).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn cosine_reaches_half_at_mid_decay_and_constant_stays() {
        let s = Schedule {
            peak: 2.0,
            warmup_steps: 0,
            total_steps: 10,
            decay: Decay::Cosine,
        };
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        assert!(s.lr(9).abs() < 1e-12);
        let c = Schedule {
            decay: Decay::Constant,
            ..s
        };
        assert!((0..20).all(|i| c.lr(i) == 2.0));
    }
}
