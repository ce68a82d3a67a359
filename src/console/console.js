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

  // Approvals: the queue never moves under the operator's pointer. Entries already shown
  // stay where they are; new ones are added below (the server lists the oldest first); an
  // entry that is no longer pending is greyed out in place, and taken away only while the
  // pointer and the focus are outside the queue.
  let pointerInQueue = false;
  if (approvals) {
    approvals.addEventListener("mouseenter", function () { pointerInQueue = true; });
    approvals.addEventListener("mouseleave", function () { pointerInQueue = false; sweepGone(); });
    approvals.addEventListener("focusout", function () { setTimeout(sweepGone, 0); });
  }

  function sweepGone() {
    if (pointerInQueue || approvals.contains(document.activeElement)) return;
    for (const li of approvals.querySelectorAll("li.approval.gone")) li.remove();
    const list = approvals.querySelector("ul.pending");
    if (list && !list.querySelector("li.approval")) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.id = "pending-empty";
      empty.textContent = "No call is waiting for approval.";
      document.getElementById("pending-part").replaceChildren(empty);
    }
  }

  function showApprovals(html) {
    const next = fragment(html);
    const part = document.getElementById("pending-part");
    const nextPart = next.getElementById ? next.getElementById("pending-part") : next.querySelector("#pending-part");
    const nextResolved = next.querySelector("#resolved-part");
    const list = part && part.querySelector("ul.pending");
    const nextList = nextPart && nextPart.querySelector("ul.pending");
    if (!part || !nextPart || !list) {
      // Nothing pending was shown: there is nothing under the pointer to move.
      if (nextPart && part) part.replaceWith(nextPart);
      else if (!part) approvals.replaceChildren(next);
    } else {
      const wanted = new Set();
      if (nextList) {
        for (const li of nextList.querySelectorAll("li.approval")) {
          wanted.add(li.dataset.id);
          if (!list.querySelector('li.approval[data-id="' + CSS.escape(li.dataset.id) + '"]')) list.append(li);
        }
      }
      for (const li of list.querySelectorAll("li.approval")) {
        if (wanted.has(li.dataset.id) || li.classList.contains("gone")) continue;
        li.classList.add("gone");
        for (const button of li.querySelectorAll("button")) button.disabled = true;
        const note = document.createElement("p");
        note.className = "gone-note";
        note.textContent = "No longer pending (resolved or expired).";
        li.append(note);
      }
      const count = document.getElementById("pending-count");
      const nextCount = nextPart.querySelector("#pending-count");
      if (count) count.textContent = nextCount ? nextCount.textContent : "0";
      sweepGone();
    }
    const resolvedPart = document.getElementById("resolved-part");
    if (resolvedPart && nextResolved) resolvedPart.replaceWith(nextResolved);
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
