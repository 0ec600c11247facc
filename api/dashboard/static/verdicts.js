// Turning a job's result into plain verdicts. The estimator (estimator/report.py, estimator/llc.py)
// attaches warnings {code, message, chain}; each code maps to a headline and what to try. The
// server's own message is always shown too (it carries the measured numbers).

export const WARNING_ADVICE = {
  rhat_high: { level: "warning", title: "Chains disagree (R-hat high)",
    tryThis: "Run longer: raise num_burnin_steps and num_draws, or use more chains. If it persists, lower gamma relative to the curvature or lower epsilon." },
  ess_low: { level: "warning", title: "Too few effective samples",
    tryThis: "The estimate is noisy: raise num_draws or num_chains." },
  mala_acceptance: { level: "warning", title: "Step size off (MALA acceptance outside the healthy band)",
    tryThis: "Below the band: lower epsilon. Above it: raise epsilon or run longer." },
  negative_estimate: { level: "warning", title: "Negative λ̂",
    tryThis: "w* is probably not a local minimum: train the model longer, and check the loss and the data." },
  below_init_loss: { level: "warning", title: "A chain found lower loss than L_n(w*)",
    tryThis: "w* is not a local minimum of this loss: train longer before estimating (or raise gamma to stay closer to w*)." },
  not_plateaued: { level: "warning", title: "Traces still rising (not plateaued)",
    tryThis: "Increase num_burnin_steps and num_draws until the λ̂ trace flattens." },
  diverged: { level: "warning", title: "A chain diverged",
    tryThis: "Lower epsilon (or raise gamma); the remaining chains were used for the estimate." },
  stopped: { level: "warning", title: "Sampling stopped early",
    tryThis: "The estimate uses only the draws made so far; rerun without stopping it for a full estimate." },
  no_estimate: { level: "error", title: "No estimate",
    tryThis: "No chain produced a draw: lower epsilon, check the loss function and data, and resubmit." },
  burnin_restart: { level: "note", title: "Warm-up restarted with a smaller step",
    tryThis: "Informational: the sampler recovered by itself. Setting a smaller epsilon avoids the restart." },
  vmap_unavailable: { level: "note", title: "Chains ran one after another",
    tryThis: "Informational: same numbers, only slower." },
};

const UNKNOWN = { level: "warning", title: "Warning",
  tryThis: "See docs/estimator.md for this warning code." };

// -> {overall: "healthy"|"warning"|"error"|"pending", headline, items: [{level, title, message, tryThis, code, chain}]}
export function verdictsForJob(job) {
  if (job.status === "queued" || job.status === "running") {
    return { overall: "pending", headline: "Not finished yet: verdicts appear when the job succeeds.", items: [] };
  }
  if (job.status === "failed") {
    return { overall: "error", headline: "The job failed.", items: [{ level: "error", title: "Failed",
      message: job.error || "no error message", tryThis: "Fix the cause named above and submit again.", code: "failed" }] };
  }
  if (job.status === "cancelled") {
    return { overall: "note", headline: "The job was cancelled.", items: [] };
  }
  const warnings = (job.result && job.result.warnings) || [];
  const items = warnings.map((w) => {
    const advice = WARNING_ADVICE[w.code] || { ...UNKNOWN, title: `Warning: ${w.code}` };
    return { level: advice.level, title: advice.title, message: w.message, tryThis: advice.tryThis, code: w.code,
      chain: w.chain };
  });
  const serious = items.filter((i) => i.level !== "note");
  if (items.some((i) => i.level === "error")) {
    return { overall: "error", headline: "No usable estimate.", items };
  }
  if (serious.length === 0) {
    return { overall: "healthy",
      headline: "Healthy: the chains agree, there are enough effective samples, and the traces have plateaued.",
      items };
  }
  return { overall: "warning",
    headline: `Warning: ${serious.length} problem${serious.length > 1 ? "s" : ""} to look at before trusting λ̂.`, items };
}

// Short verdict word for a table cell.
export function verdictWord(job) {
  const v = verdictsForJob(job);
  return { healthy: "healthy", warning: "warning", error: job.status === "failed" ? "failed" : "no estimate",
    pending: "", note: job.status }[v.overall];
}
