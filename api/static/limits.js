// skillq dashboard: the flow-control panel, from /api/v1/stats `limits` (each limited job
// type's limits, slots in use and postponed jobs) and `owner_limits` (the per-owner running
// limits and each owner's use). Loaded before dashboard.js, whose `el` and `cell` it uses.
"use strict";

function rateText(rate) {
  return rate ? `${rate.count} per ${rate.period_secs} s` : "—";
}

function renderLimits(stats) {
  const limits = stats.limits || {};
  const owners = stats.owner_limits || {};
  const typeRows = Object.entries(limits).map(([name, limit]) => {
    const row = el("tr");
    cell(row, name);
    cell(row, limit.max_concurrent === null ? "—" : `${limit.running} of ${limit.max_concurrent}`, "num");
    cell(row, limit.rate ? `${limit.started_in_window} of ${rateText(limit.rate)}` : "—", "num");
    cell(row, limit.postponed, "num");
    cell(row, limit.postponed_total, "num");
    return row;
  });
  document.querySelector("#type-limits tbody").replaceChildren(...typeRows);
  $("type-limits").hidden = !typeRows.length;

  const caps = owners.types || {};
  const ownerRows = Object.entries(owners.owners || {}).map(([name, use]) => {
    const row = el("tr");
    cell(row, name);
    const most = owners.max_running;
    cell(row, most === null || most === undefined ? "—" : `${use.running} of ${most}`, "num");
    const byType = Object.entries(use.running_by_type).map(([type, n]) => `${type} ${n} of ${caps[type]}`);
    cell(row, byType.join(", ") || "—");
    cell(row, use.postponed, "num");
    return row;
  });
  document.querySelector("#owner-limits tbody").replaceChildren(...ownerRows);
  const capList = Object.entries(caps).map(([type, n]) => `${type} ${n}`);
  $("owner-caps").textContent = owners.owners
    ? `Per owner: at most ${owners.max_running ?? "any number of"} running` +
      (capList.length ? `; of one type: ${capList.join(", ")}` : "") + "."
    : "";
  $("owner-limits").hidden = !ownerRows.length;
  $("limits-panel").hidden = !typeRows.length && !owners.owners;
}
