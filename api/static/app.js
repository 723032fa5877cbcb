// Veil's page: submit a photo or a zip to this API, long-poll the job, show the result and its receipt.
// Plain DOM code, no dependencies. Text from the API is only ever set with textContent (never as HTML),
// and URLs only when they are http(s), so a report cannot inject markup or script.
"use strict";

(() => {
  const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
  const KEY_STORAGE = "veil.apiKey";
  const WAIT_S = 10; // Prefer: wait=N long-poll; the server caps it
  const MAX_POLLS = 720; // ~2 h of long-polls, then stop asking (the job id stays on screen)
  const MAX_RETRIES = 5; // consecutive failed polls (network, 5xx, 429) before giving up
  const CONDITION_LABELS = {
    clean: "as delivered",
    jpeg90: "JPEG quality 90",
    jpeg75: "JPEG quality 75",
    webp80: "WebP quality 80",
    "resize0.5": "resized to 0.5× and back",
    blur1: "blurred (sigma 1 px)",
    noise: "with mild noise",
  };

  const el = (id) => document.getElementById(id);
  const state = { file: null, originalUrl: null, jobId: null };

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  // ---- small helpers ------------------------------------------------------------------------------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
  const fmt = (v, digits) => (isNumber(v) ? v.toFixed(digits) : "—");
  const pct = (v) => (isNumber(v) ? `${(v * 100).toFixed(1)} %` : "—");

  function bytes(n) {
    if (!isNumber(n)) return "";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    for (; n >= 1024 && i < units.length - 1; i += 1) n /= 1024;
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function safeUrl(url) {
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  function make(tag, text, attrs = {}) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  }

  function addTerm(list, term, value) {
    list.append(make("dt", term), make("dd", value));
  }

  function table(caption, headers, rows) {
    const t = make("table");
    t.append(make("caption", caption));
    const head = make("tr");
    headers.forEach((h) => head.append(make("th", h, { scope: "col" })));
    const thead = make("thead");
    thead.append(head);
    t.append(thead);
    const body = make("tbody");
    rows.forEach(([label, ...cells]) => {
      const tr = make("tr");
      tr.append(make("th", label, { scope: "row" }));
      cells.forEach((c) => tr.append(make("td", c, { class: "num" })));
      body.append(tr);
    });
    t.append(body);
    return t;
  }

  // ---- the API ------------------------------------------------------------------------------------

  function authHeaders() {
    const key = el("api-key").value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  /** The problem+json detail (RFC 9457) of a failed response, else its status line. */
  async function problemText(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: fall back on the status line
    }
    const detail = body && (body.detail || body.title);
    return detail ? `${detail} (HTTP ${response.status})` : `HTTP ${response.status} ${response.statusText}`;
  }

  /** fetch with the API key and a time limit, so that a stalled connection cannot hang the page. */
  async function api(path, { method = "GET", headers = {}, body, timeoutS = 30 } = {}) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), timeoutS * 1000);
    try {
      const response = await fetch(path, {
        method,
        body,
        headers: { ...authHeaders(), ...headers },
        signal: ctrl.signal,
      });
      if (!response.ok) throw new ApiError(await problemText(response), response.status);
      return await response.json();
    } catch (err) {
      if (err.name === "AbortError") throw new ApiError(`no answer within ${timeoutS} s`, 0);
      if (err instanceof ApiError) throw err;
      throw new ApiError(`network error: ${err.message}`, 0);
    } finally {
      clearTimeout(timer);
    }
  }

  const jobPath = (id, suffix = "") => `/v1/jobs/${encodeURIComponent(id)}${suffix}`;

  // ---- status and errors --------------------------------------------------------------------------

  function setPhase(phase) {
    document.body.dataset.phase = phase; // idle | submitting | running | done | error (tests wait on it)
  }

  function setBusy(busy) {
    el("submit").disabled = busy;
    el("cancel").hidden = !busy;
    el("cancel").disabled = false;
  }

  function showError(message) {
    el("status-panel").hidden = false;
    el("error").textContent = message;
    el("error").hidden = false;
  }

  /** The status line and bar of a new submission: its text, no job status (not the last job's green), an
   *  indeterminate bar while the file uploads. */
  function resetStatus(text) {
    el("status-panel").hidden = false;
    el("status").textContent = text;
    delete el("status").dataset.status;
    el("progress").max = 1;
    el("progress").removeAttribute("value");
  }

  /** The error state of the status line; without a job (the submission was refused) the bar is emptied. */
  function showFailedStatus(text, jobCreated) {
    if (text) el("status").textContent = text;
    el("status").dataset.status = "error";
    if (!jobCreated) {
      el("progress").max = 1;
      el("progress").value = 0;
    }
  }

  function showJob(job) {
    const done = job.progress?.done ?? 0;
    const total = job.progress?.total ?? 0;
    el("status-panel").hidden = false;
    el("status").textContent = `Job ${job.id}: ${job.status}` + (total ? `, ${done} of ${total} done` : "");
    el("status").dataset.status = job.status;
    el("progress").max = Math.max(total, 1);
    el("progress").value = job.status === "succeeded" ? Math.max(total, 1) : done;
    document.body.dataset.jobStatus = job.status;
  }

  function clearResults() {
    for (const id of ["photo-result", "archive-result", "error"]) el(id).hidden = true;
    for (const id of ["metrics", "forgers", "conditions", "archive-summary", "archive-files"]) {
      el(id).replaceChildren();
    }
    el("verdict").hidden = true;
    el("verdict").textContent = "";
    for (const id of ["protected-img", "perturbation-img", "edits-img"]) el(id).removeAttribute("src");
    el("perturbation-figure").hidden = true;
    el("edits-figure").hidden = true;
    el("previews-note").textContent = "";
    el("download").href = "#";
    delete document.body.dataset.jobStatus;
    delete document.body.dataset.jobId;
  }

  // ---- choosing a file ----------------------------------------------------------------------------

  function chooseFile(file) {
    if (!file) return;
    state.file = file;
    if (state.originalUrl) URL.revokeObjectURL(state.originalUrl);
    state.originalUrl = file.type.startsWith("image/") ? URL.createObjectURL(file) : null;
    el("file-name").textContent = `${file.name} (${bytes(file.size)})`;
  }

  function wireDropZone() {
    const zone = el("drop-zone");
    const stop = (event) => {
      event.preventDefault();
      event.stopPropagation();
    };
    ["dragenter", "dragover"].forEach((type) =>
      zone.addEventListener(type, (event) => {
        stop(event);
        zone.classList.add("dragging");
      }),
    );
    ["dragleave", "drop"].forEach((type) =>
      zone.addEventListener(type, (event) => {
        stop(event);
        zone.classList.remove("dragging");
      }),
    );
    zone.addEventListener("drop", (event) => chooseFile(event.dataTransfer?.files?.[0]));
    el("file").addEventListener("change", (event) => chooseFile(event.target.files?.[0]));
  }

  // ---- methods ------------------------------------------------------------------------------------

  async function loadMethods() {
    const select = el("method");
    try {
      const catalog = await api("/v1/methods");
      for (const m of catalog.methods ?? []) {
        const option = make("option", m.title ? `${m.title} (${m.name})` : m.name, { value: m.name });
        option.dataset.description = m.description ?? "";
        select.append(option);
      }
      const preferred = [...select.options].find((o) => o.value === "pgd");
      if (preferred) preferred.selected = true;
      describeMethod();
    } catch (err) {
      el("method-hint").textContent = `Could not load the methods (${err.message}); the server's default is used.`;
    }
  }

  function describeMethod() {
    const option = el("method").selectedOptions[0];
    el("method-hint").textContent = option?.dataset.description ?? "";
  }

  // ---- a job --------------------------------------------------------------------------------------

  function formFor(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    if (el("method").value) form.append("method", el("method").value);
    form.append("strength", el("strength").value);
    if (el("previews").checked) form.append("previews", "true");
    return form;
  }

  /** Long-poll the job until it ends; retries transient failures with a growing pause. */
  async function pollUntilDone(id) {
    let failures = 0;
    for (let i = 0; i < MAX_POLLS; i += 1) {
      if (state.jobId !== id) return null; // a newer submission took over
      try {
        const job = await api(jobPath(id), { headers: { Prefer: `wait=${WAIT_S}` }, timeoutS: WAIT_S + 30 });
        failures = 0;
        showJob(job);
        if (TERMINAL.has(job.status)) return job;
      } catch (err) {
        const transient = err.status === 0 || err.status === 429 || err.status >= 500;
        failures += 1;
        if (!transient || failures > MAX_RETRIES) throw err;
        el("status").textContent = `${err.message}; retrying (${failures} of ${MAX_RETRIES})…`;
        await sleep(1000 * 2 ** failures);
      }
    }
    throw new ApiError(`job ${id} still not finished; look it up later with GET ${jobPath(id)}`, 0);
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearResults();
    const key = el("api-key").value.trim();
    if (!key) {
      showError("Enter your API key first.");
      el("api-key").focus();
      return;
    }
    if (!state.file) {
      showError("Choose a photo or a .zip archive first.");
      el("file").focus();
      return;
    }
    setBusy(true);
    setPhase("submitting");
    const name = state.file.name;
    resetStatus(`Uploading ${name}…`);
    let job = null;
    try {
      job = await api("/v1/jobs", { method: "POST", body: formFor(state.file), timeoutS: 600 });
      state.jobId = job.id;
      document.body.dataset.jobId = job.id;
      showJob(job);
      setPhase("running");
      const finished = await pollUntilDone(job.id);
      if (finished) await finish(finished);
    } catch (err) {
      showError(err.message);
      showFailedStatus(job ? null : `${name} was not submitted.`, job !== null);
      setPhase("error");
    } finally {
      setBusy(false);
    }
  }

  async function onCancel() {
    if (!state.jobId) return;
    el("cancel").disabled = true;
    try {
      showJob(await api(jobPath(state.jobId, "/cancel"), { method: "POST" }));
    } catch (err) {
      showError(`Could not cancel: ${err.message}`); // e.g. 409: the job already finished
    }
  }

  async function finish(job) {
    if (job.status === "succeeded") {
      const outputs = await api(jobPath(job.id, "/outputs"));
      if (job.input?.kind === "archive") showArchive(job, outputs.data ?? []);
      else showPhoto(job, outputs.data ?? []);
    } else if (job.status === "failed") {
      const reason = job.error?.message || job.reason || job.error?.code || "no reason given";
      showError(`The job failed: ${reason}`);
    } else {
      el("status").textContent = `Job ${job.id} was canceled.`;
    }
    setPhase("done");
  }

  // ---- a photo's result ---------------------------------------------------------------------------

  function showPhoto(job, outputs) {
    const photo = job.report?.photos?.[0] ?? {};
    const byName = new Map(outputs.map((o) => [o.name, o]));
    const result =
      byName.get(photo.output) ??
      outputs.find((o) => !o.name.startsWith("previews/") && /\.(png|jpe?g|webp)$/i.test(o.name));
    const url = result && safeUrl(result.url);
    el("download").hidden = !url;
    if (url) {
      el("protected-img").src = url;
      // Presigned with Content-Disposition: attachment: the browser downloads it even though the
      // download attribute is ignored on another origin.
      el("download").href = url;
      el("download").setAttribute("download", result.name.split("/").pop());
    }
    if (state.originalUrl) el("original-img").src = state.originalUrl;
    showMetrics(job, photo);
    showForgers(photo.forgers);
    showVerdict(photo.receipt?.verdict);
    showConditions(photo.receipt);
    showPreviews(photo.previews, byName);
    el("photo-result").hidden = false;
  }

  function showMetrics(job, photo) {
    const list = el("metrics");
    if (photo.faces_found !== undefined) addTerm(list, "Faces found", photo.faces_found ?? "—");
    if (photo.protection) addTerm(list, "Protected", String(photo.protection).replace("_", " "));
    addTerm(list, "PSNR", isNumber(photo.psnr) ? `${fmt(photo.psnr, 2)} dB` : "—");
    addTerm(list, "SSIM", fmt(photo.ssim, 4));
    addTerm(list, "LPIPS", photo.lpips_available === false ? "unavailable" : fmt(photo.lpips, 4));
    if (typeof photo.within_budget === "boolean") addTerm(list, "Within budget", photo.within_budget ? "yes" : "no");
    if (isNumber(photo.max_change_levels)) {
      const where = isNumber(photo.changed_share) ? `, on ${pct(photo.changed_share)} of the pixels` : "";
      addTerm(list, "Largest change", `${photo.max_change_levels} of 255 levels${where}`);
    }
    if (isNumber(job.eps)) addTerm(list, "Budget (eps)", `${fmt(job.eps, 4)}${job.strength ? ` (${job.strength})` : ""}`);
    const receipt = photo.receipt;
    if (receipt && isNumber(receipt.min_success_rate)) {
      const weakest = CONDITION_LABELS[receipt.weakest] ?? receipt.weakest ?? "";
      addTerm(list, "Worst-case protection", `${pct(receipt.min_success_rate)}${weakest ? ` (${weakest})` : ""}`);
    }
    if (receipt && isNumber(receipt.min_edit_blocked)) {
      addTerm(list, "Edits blocked (worst case)", pct(receipt.min_edit_blocked));
    }
  }

  function showForgers(forgers) {
    const names = Object.keys(forgers ?? {});
    if (!names.length) return;
    const rows = names.map((name) => {
      const f = forgers[name] ?? {};
      return [name, pct(f.success_rate), fmt(f.distortion, 4), fmt(f.nullification, 4)];
    });
    el("forgers").append(
      table(
        "Forgers on the protected photo (success rate: share of edits the perturbation disrupts)",
        ["Forger", "Success rate", "Distortion", "Nullification"],
        rows,
      ),
    );
  }

  // What the receipt means, in words (core.receipt.verdict), coloured by its level.
  function showVerdict(verdict) {
    if (!verdict?.text) return;
    el("verdict").textContent = verdict.text;
    el("verdict").dataset.level = verdict.level;
    el("verdict").hidden = false;
  }

  function showConditions(receipt) {
    const conditions = receipt?.conditions;
    const names = Object.keys(conditions ?? {});
    if (!names.length) return;
    if (receipt.scope === "whole_photo") {
      // A whole-picture receipt must never read as "my face is protected".
      const note = document.createElement("p");
      note.className = "warning";
      note.setAttribute("role", "note");
      note.textContent = receipt.note ?? "No face was found: the whole picture was protected and measured.";
      el("conditions").append(note);
    }
    const forgerNames = [...new Set(names.flatMap((c) => Object.keys(conditions[c]?.forgers ?? {})))];
    const rows = names.map((c) => [
      CONDITION_LABELS[c] ?? c,
      pct(conditions[c]?.success_rate),
      pct(conditions[c]?.edit_blocked),
      ...forgerNames.map((f) => pct(conditions[c]?.forgers?.[f]?.success_rate)),
    ]);
    el("conditions").append(
      table(
        "After what platforms do to photos (success rate per condition; edits blocked: of the edits that work " +
          "on the original, the share that fail or come out visibly ruined)",
        ["Condition", "Success rate", "Edits blocked", ...forgerNames],
        rows,
      ),
    );
  }

  function showPreviews(previews, byName) {
    const asked = el("previews").checked;
    if (!previews) {
      el("previews-note").textContent = asked
        ? "No previews came back for this photo."
        : "Tick “Show what a forger makes of it” before submitting to see the forger's edits.";
      return;
    }
    const perturbation = byName.get(previews.perturbation);
    const edits = byName.get(previews.edits);
    if (perturbation && safeUrl(perturbation.url)) {
      el("perturbation-img").src = safeUrl(perturbation.url);
      const gain = isNumber(previews.amplification) ? ` ×${previews.amplification}` : "";
      el("perturbation-caption").textContent = `The perturbation added to the photo, amplified${gain} to be visible.`;
      el("perturbation-figure").hidden = false;
    }
    if (edits && safeUrl(edits.url)) {
      el("edits-img").src = safeUrl(edits.url);
      const columns = Array.isArray(previews.columns) && previews.columns.length ? ` Columns: ${previews.columns.join(", ")}.` : "";
      el("edits-caption").textContent =
        "Top row: the original face, then the forger's edits of it. " +
        `Bottom row: the protected face, then the forger's edits of it.${columns}`;
      el("edits-figure").hidden = false;
    }
    if (!perturbation && !edits) el("previews-note").textContent = "The preview images are not among the outputs.";
  }

  // ---- an archive's result ------------------------------------------------------------------------

  function showArchive(job, outputs) {
    const summary = job.report?.summary ?? {};
    const list = el("archive-summary");
    addTerm(list, "Entries", summary.entries ?? "—");
    addTerm(list, "Protected", summary.protected ?? "—");
    addTerm(list, "Errors", summary.errors ?? "—");
    const files = el("archive-files");
    for (const item of outputs) {
      const url = safeUrl(item.url);
      if (!url) continue;
      const li = make("li");
      li.append(make("a", item.name, { href: url, download: item.name.split("/").pop() }), ` (${bytes(item.size)})`);
      files.append(li);
    }
    el("archive-result").hidden = false;
  }

  // ---- start --------------------------------------------------------------------------------------

  function init() {
    const key = el("api-key");
    key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
    key.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, key.value.trim()));
    el("method").addEventListener("change", describeMethod);
    el("job-form").addEventListener("submit", onSubmit);
    el("cancel").addEventListener("click", onCancel);
    wireDropZone();
    loadMethods();
  }

  init();
})();
