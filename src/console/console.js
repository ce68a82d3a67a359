// Tollgate console: live updates over server-sent events. The server renders (and escapes)
// every fragment; this file only puts them in place, filters rows and ticks clocks.
"use strict";

(function () {
  const approvals = document.getElementById("approvals");
  const decisions = document.getElementById("decisions");
  if (!approvals && !decisions) return;
  const MAX_ROWS = 200;
  const live = document.getElementById("live");
  const filters = document.getElementById("filters");
  const shown = document.getElementById("shown");

  function fragment(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    return template.content;
  }

  // Approvals: replace the panel, but keep a pending entry the operator is typing in.
  function showApprovals(html) {
    const next = fragment(html);
    const active = document.activeElement;
    const editing = active && approvals.contains(active) ? active.closest("li.approval") : null;
    if (editing) {
      const same = next.querySelector('li.approval[data-id="' + CSS.escape(editing.dataset.id) + '"]');
      if (same) same.replaceWith(editing);
    }
    approvals.replaceChildren(next);
    if (editing && document.activeElement !== active) active.focus();
    tick();
  }

  function matches(row) {
    if (!filters) return true;
    const data = new FormData(filters);
    const verdict = data.get("verdict");
    if (verdict && row.dataset.verdict !== verdict) return false;
    for (const field of ["server", "tool", "grant"]) {
      const want = String(data.get(field) || "").trim().toLowerCase();
      if (want && !String(row.dataset[field] || "").toLowerCase().includes(want)) return false;
    }
    return true;
  }

  function applyFilters() {
    let count = 0;
    for (const row of decisions.querySelectorAll("tr.decision")) {
      const visible = matches(row);
      row.hidden = !visible;
      const detail = row.nextElementSibling;
      if (detail && detail.classList.contains("detail") && !visible) detail.hidden = true;
      if (visible) count += 1;
    }
    if (shown) shown.textContent = count + " shown";
  }

  function addDecision(html) {
    const rows = fragment(html);
    const row = rows.querySelector("tr.decision");
    if (!row || decisions.querySelector('tr.decision[data-id="' + CSS.escape(row.dataset.id) + '"]')) return;
    row.hidden = !matches(row);
    decisions.prepend(rows);
    const all = decisions.querySelectorAll("tr.decision");
    for (let i = MAX_ROWS; i < all.length; i += 1) {
      const detail = all[i].nextElementSibling;
      if (detail && detail.classList.contains("detail")) detail.remove();
      all[i].remove();
    }
    applyFilters();
  }

  if (decisions) {
    decisions.addEventListener("click", function (event) {
      const button = event.target.closest("button.more");
      if (!button) return;
      const detail = document.getElementById(button.getAttribute("aria-controls"));
      if (!detail) return;
      detail.hidden = !detail.hidden;
      button.setAttribute("aria-expanded", String(!detail.hidden));
    });
  }
  if (filters) {
    filters.addEventListener("input", applyFilters);
    filters.addEventListener("submit", function (event) { event.preventDefault(); });
  }

  function span(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s >= 3600) return Math.floor(s / 3600) + "h " + Math.floor(s / 60) % 60 + "m";
    if (s >= 60) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return s + "s";
  }

  function tick() {
    const now = Date.now();
    for (const t of document.querySelectorAll("time[data-since]")) t.textContent = span(now - Number(t.dataset.since)) + " ago";
    for (const t of document.querySelectorAll("time[data-until]")) t.textContent = "in " + span(Number(t.dataset.until) - now);
  }
  setInterval(tick, 1000);

  const events = new EventSource("/console/events");
  events.addEventListener("open", function () {
    if (live) { live.textContent = "live"; live.classList.add("on"); }
  });
  events.addEventListener("error", function () {
    if (live) { live.textContent = "reconnecting…"; live.classList.remove("on"); }
  });
  events.addEventListener("approvals", function (event) { if (approvals) showApprovals(event.data); });
  events.addEventListener("decision", function (event) { if (decisions) addDecision(event.data); });
  events.addEventListener("signed-out", function () {
    events.close();
    window.location.assign("/console/login");
  });
  if (decisions) applyFilters();
})();
