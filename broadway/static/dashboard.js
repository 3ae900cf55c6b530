// Broadway dashboard: sign in once, then poll the JSON summary and update the page in place.
// Every value from the API goes into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "broadway.clientToken";
  const POLL_MS = 1000;
  const body = document.body;
  const page = body.dataset.page;
  const jobId = body.dataset.jobId;
  const $ = (id) => document.getElementById(id);
  const SYMBOLS = {
    created: "○", queued: "…", running: "▶", succeeded: "✓", failed: "✗", cancelled: "⊘",
    alive: "●", dead: "✗",
  };
  let pollTimer = null;

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  async function api(path, options, withToken) {
    const headers = { Authorization: "Bearer " + (withToken || token() || "") };
    const resp = await fetch(path, Object.assign({ cache: "no-store" }, options || {}, { headers }));
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    return { status: resp.status, data };
  }

  // el("td", {class: "x"}, "text", otherNode): children are text unless they are nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function cssName(text) { return String(text || "unknown").toLowerCase().replace(/[^a-z-]/g, ""); }

  function badge(status) {
    const name = String(status || "unknown");
    return el("span", { class: "status status-" + cssName(name) }, (SYMBOLS[name] || "?") + " " + name);
  }

  function jobLink(id) {
    return el("a", { href: "/dashboard/job/" + encodeURIComponent(id), class: "job-link" }, String(id));
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 90) return seconds.toFixed(1) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    return (seconds / 3600).toFixed(1) + " h ago";
  }

  function when(timestamp, now) {
    return timestamp ? ago(Math.max(0, now - timestamp)) : "—";
  }

  function fill(tbody, rows, emptyText, columns) {
    if (rows.length === 0) rows = [el("tr", {}, el("td", { colspan: columns, class: "empty" }, emptyText))];
    tbody.replaceChildren(...rows);
  }

  function showMessage(text, isError) {
    const box = $("action-message");
    box.textContent = text;
    box.className = isError ? "message error" : "message";
    box.hidden = false;
  }

  // -- confirmation dialog -------------------------------------------------------------------

  function confirmAction(text, okLabel) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  async function cancelRun(id) {
    if (!(await confirmAction("Cancel grading run " + id + "? Jobs not finished are cancelled.", "Cancel run"))) return;
    const resp = await api("/api/v1/grading_run/" + encodeURIComponent(id) + "/cancel", { method: "POST" });
    if (resp.status === 200) showMessage("Run " + id + " cancelled.", false);
    else showMessage("Could not cancel run " + id + ": " + errorText(resp), true);
    refresh();
  }

  async function cancelJob(id) {
    if (!(await confirmAction("Cancel job " + id + "?", "Cancel job"))) return;
    const resp = await api("/api/v1/job/" + encodeURIComponent(id), { method: "DELETE" });
    if (resp.status === 200 || resp.status === 204) showMessage("Job " + id + " cancelled.", false);
    else if (resp.status === 404 || resp.status === 405) {
      showMessage("Could not cancel job " + id + " (HTTP " + resp.status + "): " + errorText(resp), true);
    } else showMessage("Could not cancel job " + id + ": " + errorText(resp), true);
    refresh();
  }

  function errorText(resp) {
    return (resp.data && resp.data.error) ? resp.data.error : "HTTP " + resp.status;
  }

  // -- overview ------------------------------------------------------------------------------

  function renderOverview(s) {
    const now = s.now;
    fill($("queues").tBodies[0], s.queues.map((q) => el("tr", {},
      el("td", {}, q.course), el("td", { class: "num" }, q.queued), el("td", { class: "num" }, q.running))),
    "No queues", 3);

    $("workers-total").textContent = s.workers_alive + " alive · " + s.slots_in_use + " of " + s.slots +
      " slots in use";
    fill($("workers").tBodies[0], s.workers.map((w) => {
      const jobs = el("td", { class: "jobs" });
      if (w.jobs.length === 0) jobs.append("none");
      w.jobs.forEach((j, i) => { if (i) jobs.append(", "); jobs.append(jobLink(j.job_id)); });
      return el("tr", { "data-worker": w.ref },
        el("td", {}, w.name, " ", el("span", { class: "ref" }, "(" + w.ref + ")")),
        el("td", {}, badge(w.alive ? "alive" : "dead")),
        el("td", { class: "num" }, w.in_use + " / " + w.slots),
        el("td", {}, ago(w.seconds_since_heartbeat)),
        jobs);
    }), "No workers have registered", 5);

    const runs = s.runs.map((r) => {
      const c = r.counts;
      const total = r.total || r.n_students || 0;
      const parts = [r.done + " of " + total + " jobs done", c.succeeded + " succeeded", c.failed + " failed",
        c.cancelled + " cancelled", c.running + " running", c.queued + " queued"];
      const card = el("article", { class: "run", "data-run-id": r.id },
        el("div", { class: "run-head" },
          el("span", { class: "run-id" }, "Run ", el("code", {}, r.id)),
          badge(r.status),
          el("span", { class: "muted" }, r.n_students + " students · " + r.course + " · created " +
            when(r.created_at, now))),
        el("progress", { max: Math.max(total, 1), value: r.done, "aria-label": "progress of run " + r.id }),
        el("p", { class: "counts" }, parts.join(" · ")));
      if (r.error) card.append(el("p", { class: "error-text" }, r.error));
      if (r.status === "created" || r.status === "running") {
        const button = el("button", { type: "button", class: "danger small" }, "Cancel run");
        button.addEventListener("click", () => cancelRun(r.id));
        card.querySelector(".run-head").append(button);
      }
      return card;
    });
    if (runs.length === 0) runs.push(el("p", { class: "empty" }, "No grading runs yet"));
    $("runs").replaceChildren(...runs);

    fill($("singles").tBodies[0], s.single_jobs.map((j) => el("tr", {},
      el("td", {}, jobLink(j.job_id)), el("td", {}, badge(j.status)), el("td", {}, j.course),
      el("td", {}, when(j.queued_at, now)), el("td", {}, when(j.finished_at, now)))),
    "No single jobs yet", 5);
  }

  // -- one job -------------------------------------------------------------------------------

  function renderJob(j) {
    const now = Date.now() / 1000;
    const facts = el("dl", { class: "facts" });
    const add = (term, value) => facts.append(el("dt", {}, term), el("dd", {}, value));
    add("Status", badge(j.status));
    add("Kind", j.kind || "—");
    add("Grading run", j.run_id || "—");
    add("Course", j.course);
    add("Attempts", j.attempts);
    add("Worker", j.worker_name || "—");
    add("Queued", when(j.queued_at, now));
    add("Started", when(j.started_at, now));
    add("Finished", when(j.finished_at, now));
    if (j.student) add("Student", Object.entries(j.student).map(([k, v]) => k + "=" + v).join(" "));
    const parts = [facts];
    if (j.error) parts.push(el("p", { class: "error-text" }, "Error: " + j.error));
    if (!["succeeded", "failed", "cancelled"].includes(j.status)) {
      const button = el("button", { type: "button", class: "danger" }, "Cancel job");
      button.addEventListener("click", () => cancelJob(j.job_id));
      parts.push(button);
    }
    parts.push(el("h3", {}, "Stages"));
    if (j.stages.length === 0) {
      parts.push(el("p", { class: "empty" }, j.result_text === null ? "No stage results yet" : "Result (not stage JSON):"));
      if (j.result_text) parts.push(el("pre", { class: "output" }, j.result_text));
    }
    j.stages.forEach((st, i) => {
      const ok = st.exit_code === 0 && !st.timed_out;
      const flags = [st.timed_out ? "timed out" : null, st.oom_killed ? "out of memory" : null].filter(Boolean);
      parts.push(el("article", { class: "stage", "data-stage": i },
        el("h4", {}, "Stage " + (i + 1) + ": ", el("code", {}, st.image || "?")),
        el("p", {}, badge(ok ? "succeeded" : "failed"), " exit code ",
          el("strong", { class: "exit-code" }, st.exit_code === null || st.exit_code === undefined ? "—" : st.exit_code),
          flags.length ? " · " + flags.join(", ") : "",
          st.duration_s !== null && st.duration_s !== undefined ? " · " + st.duration_s + " s" : ""),
        el("p", { class: "muted" }, st.output_truncated ? "Output (its end):" : "Output:"),
        el("pre", { class: "output" }, st.output_tail || "")));
    });
    $("job-body").replaceChildren(...parts);
    return ["succeeded", "failed", "cancelled"].includes(j.status);
  }

  // -- sign-in and polling -------------------------------------------------------------------

  function showSignIn(error) {
    clearTimeout(pollTimer);
    $("content").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("live").textContent = "";
    const box = $("sign-in-error");
    box.hidden = !error;
    box.textContent = error || "";
    $("token").focus();
  }

  function showContent() {
    $("sign-in").hidden = true;
    $("content").hidden = false;
    $("sign-out").hidden = false;
  }

  function dataPath() {
    return page === "job" ? "/api/v1/summary/job/" + encodeURIComponent(jobId) : "/api/v1/summary";
  }

  async function refresh(candidate) {
    clearTimeout(pollTimer);
    let resp;
    try {
      resp = await api(dataPath(), {}, candidate);
    } catch (e) {
      $("live").textContent = "Connection lost; retrying…";
      pollTimer = setTimeout(refresh, POLL_MS);
      return;
    }
    if (resp.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(candidate ? "That token was not accepted. Check the client token and try again."
        : "Your token is no longer accepted; sign in again.");
      return;
    }
    if (candidate) sessionStorage.setItem(TOKEN_KEY, candidate);
    showContent();
    let finished = false;
    if (resp.status !== 200) {
      $("live").textContent = "Error: " + errorText(resp);
    } else {
      finished = page === "job" ? renderJob(resp.data) : (renderOverview(resp.data), false);
      $("live").textContent = (finished ? "Final · " : "Live · updated ") + new Date().toLocaleTimeString();
    }
    if (!finished) pollTimer = setTimeout(refresh, POLL_MS);
  }

  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const candidate = $("token").value.trim();
    $("token").value = "";
    if (candidate) refresh(candidate);
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(null);
  });

  if (token()) refresh(); else showSignIn(null);
})();
