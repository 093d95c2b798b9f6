// The Sluice console: one page, served by nginx as static files (no build step, nothing
// from another origin: see the Content-Security-Policy in nginx/templates/).
//
// The API key lives in this module's memory only: never in storage, a URL, a cookie the
// page can read, or a log. Every call goes through the same front door, auth, limits and
// metrics as any other client. Model output is only ever added as text, never as markup.

const MAX_EVENT_CHARS = 1 << 20; // an event longer than this is refused, not buffered
const RESUME_TRIES = 5; // resumes in a row that bring nothing, before giving up
const RETRYABLE = new Set([429, 502, 503, 504]); // a restart's or an overload's: for now

const state = {
  key: null,
  answer: null,
  kinds: null, // the job kinds and their params schemas, once asked
  jobs: new Map(), // job id -> what the page shows of it and its EventSource
  tokens: new Map(), // stream-token path -> when its cookie should be renewed (ms)
  signingOut: Promise.resolve(), // the last Sign out's cookie removals
};
const $ = (id) => document.getElementById(id);

class ApiFailure extends Error {}

function requestId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function api(path, options = {}, key = state.key) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", "Bearer " + key);
  return fetch(path, {
    ...options,
    headers,
    credentials: "same-origin",
    cache: "no-store",
    redirect: "error",
  });
}

// What a failed answer says: the services' JSON error ({"error": {"message", "code"}}),
// else its status.
async function failureOf(response) {
  let text = "";
  try {
    text = await response.text();
    const error = JSON.parse(text).error;
    if (error && typeof error.message === "string") {
      return new ApiFailure(`${response.status} ${error.code || error.type || ""}: ${error.message}`);
    }
  } catch {
    // not JSON: the status says it
  }
  return new ApiFailure(`${response.status} ${response.statusText || text.slice(0, 200)}`);
}

function describe(error) {
  if (error && typeof error === "object") {
    const code = error.code || error.type || "error";
    return `${code}: ${error.message || "the stream failed"}`;
  }
  return String(error);
}

// -- pages ---------------------------------------------------------------------------

const PAGES = ["chat", "jobs", "logs", "streams"];

function show() {
  const wanted = location.hash.slice(1);
  const page = state.key === null ? "sign-in" : PAGES.includes(wanted) ? wanted : PAGES[0];
  for (const id of ["sign-in", ...PAGES]) $(id).hidden = id !== page;
  $("nav").hidden = $("sign-out").hidden = state.key === null;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const focus = {
    "sign-in": $("key"),
    chat: $("prompt"),
    jobs: $("job-kind"),
    logs: $("log-grep"),
    streams: $("streams-title"),
  }[page];
  if (focus) focus.focus();
  if (page === "jobs") openJobs();
  if (page === "logs") openLogs();
  if (page === "streams") openStreams();
  else closeStreams();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("key");
  const key = input.value.trim();
  input.value = "";
  $("sign-in-error").textContent = "";
  state.key = key;
  try {
    const response = await api("/v1/models");
    if (!response.ok) throw await failureOf(response);
    const listed = await response.json();
    const models = $("models");
    models.replaceChildren(
      ...(listed.data || []).map((model) => {
        const option = document.createElement("option");
        option.value = model.id;
        return option;
      }),
    );
    if (!$("model").value && listed.data && listed.data.length) $("model").value = listed.data[0].id;
  } catch (error) {
    state.key = null;
    $("sign-in-error").textContent = `Sign-in failed: ${error.message}`;
  }
  show();
}

function signOut() {
  const key = state.key;
  const paths = new Set([JOB_TOKEN_PATH, LOG_TOKEN_PATH, ...state.tokens.keys()]);
  stop();
  closeJobs();
  closeLogs();
  closeStreams();
  state.key = null;
  // The browser drops its stream-token cookies too (this page cannot: they are HttpOnly).
  // A new sign-in's first cookie waits for these, so none of them removes it.
  state.signingOut = Promise.allSettled(
    [...paths].map((path) =>
      api(
        "/auth/stream-token",
        { method: "DELETE", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ path }) },
        key,
      ),
    ),
  );
  $("models").replaceChildren();
  $("model").value = "";
  $("answer").textContent = "";
  $("chat-error").textContent = "";
  show();
}

// -- server-sent events over fetch ----------------------------------------------------

async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // CR LF, CR and LF all end a line; a CR at a chunk's end waits for the next chunk
      // (its LF may be there).
      buffer += decoder.decode(value, { stream: true });
      const held = buffer.endsWith("\r") ? "\r" : "";
      buffer = buffer.slice(0, buffer.length - held.length).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = { event: "message", data: [], id: null };
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue; // comments: the proxy's pings
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (name === "data") event.data.push(value);
          else if (name === "event") event.event = value;
          else if (name === "id") event.id = value;
        }
        if (event.data.length || event.id !== null) yield { ...event, data: event.data.join("\n") };
      }
      buffer += held;
      if (buffer.length > MAX_EVENT_CHARS) throw new ApiFailure("an event is too large");
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// -- chat -------------------------------------------------------------------------------

function setStatus(text) {
  $("status").textContent = text;
}

function showStats(answer) {
  const now = performance.now();
  const tokens = answer.usage ?? answer.chunks;
  $("tokens").textContent = String(tokens);
  $("ttft").textContent = answer.first === null ? "–" : `${Math.round(answer.first - answer.started)} ms`;
  const seconds = answer.first === null ? 0 : (now - answer.first) / 1000;
  $("rate").textContent = seconds > 0.05 ? (tokens / seconds).toFixed(1) : "–";
}

// Reads one response of an answer: true when it ended ([DONE]); false when the connection
// ended first (the caller resumes it, when it can). An error event throws.
async function readAnswer(response, answer) {
  try {
    for await (const event of sseEvents(response.body)) {
      if (event.id !== null) answer.lastId = event.id;
      if (event.data === "[DONE]") return true;
      if (event.event === "reconnect") {
        // A drain's hint: this connection ends; come back after retry_ms.
        try {
          const retry = JSON.parse(event.data).retry_ms;
          if (Number.isFinite(retry)) answer.retryMs = retry;
        } catch {
          // no figure: the default back-off
        }
        continue;
      }
      if (!event.data) continue;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        throw new ApiFailure("the proxy sent an event that is not JSON");
      }
      if (message && message.error) throw new ApiFailure(describe(message.error));
      const usage = message && message.usage;
      if (usage && Number.isInteger(usage.completion_tokens)) answer.usage = usage.completion_tokens;
      for (const choice of (message && message.choices) || []) {
        const content = choice && choice.delta && choice.delta.content;
        if (typeof content === "string" && content) {
          if (answer.first === null) {
            answer.first = performance.now();
            setStatus("streaming");
          }
          answer.chunks += 1;
          $("answer").append(document.createTextNode(content));
        }
      }
      showStats(answer);
    }
  } catch (error) {
    if (error instanceof ApiFailure || answer.stopped) throw error;
    return false; // the connection broke: resumable
  }
  return false;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("stopped", "AbortError"));
    });
  });
}

async function send(event) {
  event.preventDefault();
  if (state.answer !== null || state.key === null) return;
  const controller = new AbortController();
  const answer = {
    controller,
    id: requestId(),
    key: state.key, // (a Stop after Sign out still reaches the answer)
    resume: null,
    lastId: null,
    stopped: false,
    chunks: 0, // content deltas: tokens until the usage says how many
    usage: null, // completion_tokens, from the usage chunk (asked for: include_usage)
    retryMs: null,
    started: performance.now(),
    first: null,
  };
  state.answer = answer;
  $("answer").textContent = "";
  $("chat-error").textContent = "";
  $("reconnects").textContent = "0";
  $("send").disabled = true;
  $("stop").disabled = false;
  $("answer").dataset.requestId = answer.id;
  setStatus("waiting for the first token");
  showStats(answer);
  const body = {
    model: $("model").value.trim(),
    stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: "user", content: $("prompt").value }],
  };
  try {
    let response = await api("/v1/chat/completions", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "text/event-stream",
        "X-Request-ID": answer.id,
        "X-Sluice-Resumable": "1",
      },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw await failureOf(response);
    answer.resume = response.headers.get("X-Sluice-Resume");
    let finished = await readAnswer(response, answer);
    let tries = 0; // in a row without an event: a long answer may be resumed many times
    let reconnects = 0;
    while (!finished) {
      if (!answer.resume || tries >= RESUME_TRIES) {
        throw new ApiFailure("the connection was lost before the answer ended");
      }
      tries += 1;
      reconnects += 1;
      $("reconnects").textContent = String(reconnects);
      setStatus("reconnecting");
      // The server's word on when to come back (a drain's hint, a Retry-After), else a
      // back-off with jitter.
      const wait = answer.retryMs ?? (300 * tries) * (1 + Math.random());
      answer.retryMs = null;
      await sleep(wait, controller.signal);
      const headers = { Accept: "text/event-stream" }; // a refusal for now is a hint, then
      if (answer.lastId !== null) headers["Last-Event-ID"] = answer.lastId;
      try {
        response = await api(answer.resume, { headers, signal: controller.signal }, answer.key);
      } catch (error) {
        if (answer.stopped) throw error;
        continue; // still unreachable: try again
      }
      if (response.status === 204) break; // everything was read already
      if (RETRYABLE.has(response.status)) {
        const after = Number(response.headers.get("Retry-After"));
        answer.retryMs = Number.isFinite(after) && after > 0 ? after * 1000 : null;
        await response.body?.cancel();
        continue;
      }
      if (!response.ok) throw await failureOf(response);
      const seen = answer.lastId;
      finished = await readAnswer(response, answer);
      if (answer.lastId !== seen) tries = 0;
    }
    setStatus("done");
  } catch (error) {
    if (answer.stopped) {
      setStatus("stopped");
    } else {
      setStatus("failed");
      $("chat-error").textContent = error.message;
    }
  } finally {
    showStats(answer);
    state.answer = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

// Stop: the request is aborted; a resumable answer goes on without its reader, so it is
// stopped where it runs too (DELETE), which cancels the upstream request. (Aborted before
// its headers, an answer is not handed out yet: the proxy cancels it with the request.)
function stop() {
  const answer = state.answer;
  if (answer === null || answer.stopped) return;
  answer.stopped = true;
  setStatus("stopping");
  $("stop").disabled = true;
  answer.controller.abort();
  if (answer.resume) {
    const path = answer.resume.replace(/\/events$/, "");
    api(path, { method: "DELETE" }, answer.key).catch(() => {});
  }
}

// -- stream tokens: an EventSource cannot send the key -------------------------------------

// A short-lived cookie scoped to ``path`` (HttpOnly: this page never sees it), asked with
// the key; asked again past half its life. Each reconnect of a stream renews it too.
async function streamToken(path) {
  await state.signingOut;
  const renewAt = state.tokens.get(path);
  if (renewAt !== undefined && performance.now() < renewAt) return;
  const response = await api("/auth/stream-token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ path }),
  });
  if (!response.ok) throw await failureOf(response);
  const issued = await response.json();
  state.tokens.set(path, performance.now() + (issued.expires_in * 1000) / 2);
}

// -- jobs ------------------------------------------------------------------------------

const JOB_TOKEN_PATH = "/jobs/";
const FINAL_JOB_EVENTS = { complete: "succeeded", failed: "failed", cancelled: "cancelled" };
const REOPEN_TRIES = 5;

function schemaType(schema) {
  if (schema.type) return schema.type;
  const typed = (schema.anyOf || []).find((s) => s.type && s.type !== "null");
  return typed ? typed.type : "string";
}

function paramFields(kind) {
  const schema = kind.params || {};
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties || {}).map(([name, prop]) => {
    const type = schemaType(prop);
    const label = document.createElement("label");
    label.textContent = prop.title || name;
    const input = document.createElement("input");
    input.name = name;
    input.dataset.type = type;
    if (type === "boolean") {
      input.type = "checkbox";
      input.checked = prop.default === true;
    } else {
      input.type = type === "integer" || type === "number" ? "number" : "text";
      if (input.type === "number") {
        input.step = type === "integer" ? "1" : "any";
        const bound = (key, alt) => (prop[key] ?? (prop.anyOf || []).map((s) => s[key]).find((v) => v !== undefined) ?? alt);
        const min = bound("minimum", bound("exclusiveMinimum", undefined));
        const max = bound("maximum", bound("exclusiveMaximum", undefined));
        if (min !== undefined) input.min = String(min);
        if (max !== undefined) input.max = String(max);
      }
      if (prop.default !== undefined && prop.default !== null) input.value = String(prop.default);
      input.required = required.has(name);
    }
    if (prop.description) input.title = prop.description;
    label.append(input);
    return label;
  });
}

function showParams() {
  const kind = (state.kinds || []).find((k) => k.name === $("job-kind").value);
  $("job-params").replaceChildren(...(kind ? paramFields(kind) : []));
}

function paramsOf() {
  const params = {};
  for (const input of $("job-params").querySelectorAll("input")) {
    const type = input.dataset.type;
    if (type === "boolean") params[input.name] = input.checked;
    else if (input.value === "") continue; // left to the kind's default
    else if (type === "integer" || type === "number") params[input.name] = Number(input.value);
    else params[input.name] = input.value;
  }
  return params;
}

async function openJobs() {
  $("jobs-error").textContent = "";
  try {
    if (state.kinds === null) {
      const response = await api("/jobs/kinds");
      if (!response.ok) throw await failureOf(response);
      state.kinds = (await response.json()).kinds;
      $("job-kind").replaceChildren(
        ...state.kinds.map((kind) => {
          const option = document.createElement("option");
          option.value = option.textContent = kind.name;
          return option;
        }),
      );
      showParams();
    }
    const response = await api("/jobs");
    if (!response.ok) throw await failureOf(response);
    for (const job of (await response.json()).jobs) showJob(job);
  } catch (error) {
    $("jobs-error").textContent = error.message;
  }
}

function closeJobs() {
  for (const entry of state.jobs.values()) if (entry.source) entry.source.close();
  state.jobs.clear();
  state.tokens.clear();
  state.kinds = null;
  $("job-list").replaceChildren();
  $("job-kind").replaceChildren();
  $("job-params").replaceChildren();
}

async function startJob(event) {
  event.preventDefault();
  $("jobs-error").textContent = "";
  try {
    const response = await api("/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ kind: $("job-kind").value, params: paramsOf() }),
    });
    if (!response.ok) throw await failureOf(response);
    const created = await response.json();
    const job = await api(created.status_url);
    if (!job.ok) throw await failureOf(job);
    showJob(await job.json());
  } catch (error) {
    $("jobs-error").textContent = error.message;
  }
}

function jobCard(job) {
  const item = document.createElement("li");
  item.dataset.jobId = job.id;
  const head = document.createElement("div");
  head.className = "head";
  const kind = document.createElement("strong");
  kind.textContent = job.kind;
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = job.id;
  const stateEl = document.createElement("span");
  stateEl.className = "state";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "cancel";
  cancel.textContent = "Cancel";
  cancel.addEventListener("click", () => cancelJob(job.id));
  head.append(kind, id, stateEl, cancel);
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.setAttribute("aria-label", `progress of ${job.kind} ${job.id}`);
  const message = document.createElement("div");
  message.className = "message";
  const outcome = document.createElement("div");
  outcome.className = "outcome";
  const meta = document.createElement("div");
  meta.className = "meta";
  item.append(head, bar, message, outcome, meta);
  return { item, stateEl, cancel, bar, message, outcome, meta };
}

function showJob(job) {
  let entry = state.jobs.get(job.id);
  if (entry === undefined) {
    const card = jobCard(job);
    entry = { ...card, job, source: null, lastId: null, events: 0, opens: 0, gaps: 0, tries: 0 };
    state.jobs.set(job.id, entry);
    // Newest first, whichever answer came first (the list's or a start's).
    card.item.dataset.created = String(job.created_at);
    const later = [...$("job-list").children].find((li) => Number(li.dataset.created) < job.created_at);
    $("job-list").insertBefore(card.item, later ?? null);
    // The page follows the job's events from its first (history, then live): the state is
    // what they say, wherever the page joined.
    if (!isFinal(job.state)) watchJob(entry);
  }
  render(entry, job);
}

function isFinal(jobState) {
  return jobState === "succeeded" || jobState === "failed" || jobState === "cancelled";
}

function render(entry, job) {
  entry.job = { ...entry.job, ...job };
  const j = entry.job;
  entry.stateEl.textContent = j.state;
  entry.stateEl.dataset.state = j.state;
  entry.bar.value = j.percent || 0;
  entry.item.dataset.state = j.state;
  entry.message.textContent = j.message || (j.step != null ? `step ${j.step}` : "");
  entry.outcome.textContent =
    j.state === "succeeded" ? `result: ${JSON.stringify(j.result)}` : j.error ? `error: ${j.error}` : "";
  entry.cancel.hidden = isFinal(j.state);
  const gaps = entry.gaps ? `, ${entry.gaps} out of order` : "";
  entry.meta.textContent = `${Math.round(j.percent || 0)}% · ${entry.events} events (last id ${entry.lastId ?? "–"}${gaps}) · ${Math.max(0, entry.opens - 1)} reconnects`;
  entry.item.dataset.events = String(entry.events);
  entry.item.dataset.lastId = entry.lastId ?? "";
  entry.item.dataset.reconnects = String(Math.max(0, entry.opens - 1));
}

async function watchJob(entry) {
  try {
    await streamToken(JOB_TOKEN_PATH);
  } catch (error) {
    entry.outcome.textContent = `cannot follow: ${error.message}`;
    return;
  }
  if (state.jobs.get(entry.job.id) !== entry) return; // signed out meanwhile
  const after = entry.lastId === null ? "" : `?after=${encodeURIComponent(entry.lastId)}`;
  const source = new EventSource(`${entry.job.events_url}${after}`);
  entry.source = source;
  source.onopen = () => {
    entry.opens += 1;
    render(entry, {});
  };
  const seen = (event) => {
    const id = Number(event.lastEventId);
    const last = entry.lastId === null ? 0 : Number(entry.lastId);
    if (Number.isInteger(id) && id !== last + 1) entry.gaps += 1; // lost or repeated
    entry.lastId = event.lastEventId;
    entry.events += 1;
    entry.tries = 0;
    try {
      return JSON.parse(event.data);
    } catch {
      return {};
    }
  };
  source.addEventListener("progress", (event) => {
    const data = seen(event);
    render(entry, { state: "running", percent: data.percent, step: data.step, message: data.message });
  });
  source.addEventListener("log", (event) => {
    const data = seen(event);
    render(entry, { message: data.message });
  });
  for (const [name, jobState] of Object.entries(FINAL_JOB_EVENTS)) {
    source.addEventListener(name, (event) => {
      const data = seen(event);
      source.close();
      entry.source = null;
      const percent = jobState === "succeeded" ? 100 : entry.job.percent;
      render(entry, { state: jobState, percent, result: data.result, error: data.error || null });
    });
  }
  source.onerror = () => {
    // The browser reconnects by itself (Last-Event-ID) unless it gave up: a non-200, say a
    // cookie that expired. Then: a fresh token, and a new EventSource after the last id.
    if (source.readyState !== EventSource.CLOSED || entry.source !== source) return;
    entry.source = null;
    if (isFinal(entry.job.state) || entry.tries >= REOPEN_TRIES) return;
    entry.tries += 1;
    state.tokens.delete(JOB_TOKEN_PATH);
    setTimeout(() => watchJob(entry), 500 * entry.tries);
  };
}

async function cancelJob(id) {
  $("jobs-error").textContent = "";
  try {
    const response = await api(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (!response.ok) throw await failureOf(response);
  } catch (error) {
    $("jobs-error").textContent = error.message;
  }
}

// -- logs ------------------------------------------------------------------------------

const LOG_TOKEN_PATH = "/logs/";
const MAX_LOG_LINES = 5000; // shown at most: the oldest go first
const logs = {
  files: null, // the names this key may follow
  sources: new Map(), // name -> its EventSource while following
  lastIds: new Map(), // name -> the last line's position (inode:offset), to resume after
  grep: "",
  backlog: 20,
  paused: false,
};

async function openLogs() {
  if (logs.files !== null) return;
  $("logs-error").textContent = "";
  try {
    const response = await api("/logs", { headers: { Accept: "application/json" } });
    if (!response.ok) throw await failureOf(response);
    logs.files = (await response.json()).files;
    $("log-files").replaceChildren(
      Object.assign(document.createElement("legend"), { textContent: "Files" }),
      ...logs.files.map((name) => {
        const label = document.createElement("label");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.name = "file";
        box.value = name;
        label.append(box, document.createTextNode(name));
        return label;
      }),
    );
  } catch (error) {
    $("logs-error").textContent = error.message;
  }
}

function closeLogs() {
  for (const source of logs.sources.values()) source.close();
  logs.sources.clear();
  logs.lastIds.clear();
  logs.files = null;
  logs.paused = false;
  $("log-lines").replaceChildren();
  $("log-files").replaceChildren();
  followingButtons(false);
}

function followingButtons(following) {
  $("log-follow").disabled = following;
  $("log-pause").disabled = !following;
  $("log-stop").disabled = !following;
  $("log-pause").textContent = logs.paused ? "Resume" : "Pause";
}

function levelOf(text, parsed) {
  const named = parsed && typeof parsed === "object" ? String(parsed.level || parsed.severity || "") : "";
  const said = named || (text.match(/\b(CRITICAL|FATAL|ERROR|WARN(?:ING)?|DEBUG)\b/i) || [""])[0];
  const level = said.toLowerCase();
  if (["critical", "fatal", "error"].includes(level)) return "error";
  if (level.startsWith("warn")) return "warn";
  return level === "debug" ? "debug" : "";
}

function addLine(source, text, kind) {
  const list = $("log-lines");
  const item = document.createElement("li");
  const label = document.createElement("span");
  label.className = "source";
  label.textContent = source;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(label, body);
  item.dataset.source = source;
  if (kind === "notice") {
    item.className = "notice";
  } else {
    let parsed = null;
    if (text.startsWith("{")) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = null;
      }
    }
    const level = levelOf(text, parsed);
    if (level) item.classList.add(level);
    if (parsed !== null && typeof parsed === "object") {
      item.classList.add("json");
      item.tabIndex = 0;
      const toggle = () => {
        const shown = item.querySelector("pre");
        if (shown) return shown.remove();
        const pre = document.createElement("pre");
        pre.textContent = JSON.stringify(parsed, null, 2);
        item.append(pre);
      };
      item.addEventListener("click", toggle);
      item.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          toggle();
        }
      });
    }
  }
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(item);
  while (list.children.length > MAX_LOG_LINES) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function followFile(name) {
  const query = new URLSearchParams();
  const after = logs.lastIds.get(name);
  if (after !== undefined) query.set("after", after); // resumed: what came meanwhile
  else query.set("lines", String(logs.backlog));
  if (logs.grep) query.set("grep", logs.grep);
  const source = new EventSource(`/logs/${encodeURIComponent(name)}?${query}`);
  logs.sources.set(name, source);
  source.onmessage = (event) => {
    if (event.lastEventId) logs.lastIds.set(name, event.lastEventId);
    addLine(name, event.data, "line");
  };
  for (const kind of ["rotated", "truncated", "deleted", "created", "gap", "refused"]) {
    source.addEventListener(kind, (event) => {
      let details = "";
      try {
        const data = JSON.parse(event.data);
        details = Object.entries(data)
          .filter(([key]) => key !== "file")
          .map(([key, value]) => `${key}=${value}`)
          .join(" ");
      } catch {
        details = event.data;
      }
      addLine(name, `==> ${kind} ${details} <==`, "notice");
    });
  }
  source.onerror = () => {
    // Reconnects by itself (Last-Event-ID); if it gave up (a cookie that expired), again
    // with a fresh token after the last line.
    if (source.readyState !== EventSource.CLOSED || logs.sources.get(name) !== source) return;
    logs.sources.delete(name);
    state.tokens.delete(LOG_TOKEN_PATH);
    setTimeout(() => {
      if (!logs.paused && state.key !== null && !logs.sources.has(name)) {
        streamToken(LOG_TOKEN_PATH).then(() => followFile(name), (error) => {
          $("logs-error").textContent = error.message;
        });
      }
    }, 1000);
  };
}

async function followLogs(event) {
  event.preventDefault();
  $("logs-error").textContent = "";
  const names = [...$("log-files").querySelectorAll("input:checked")].map((box) => box.value);
  if (!names.length) {
    $("logs-error").textContent = "Pick a file to follow.";
    return;
  }
  logs.grep = $("log-grep").value;
  logs.backlog = Math.max(0, Math.min(1000, Number($("log-backlog").value) || 0));
  try {
    // The pattern is checked first, where the answer can be read (an EventSource cannot
    // read a 400's reason).
    const query = new URLSearchParams({ follow: "false", lines: "0" });
    if (logs.grep) query.set("grep", logs.grep);
    const checked = await api(`/logs/${encodeURIComponent(names[0])}?${query}`);
    if (!checked.ok) throw await failureOf(checked);
    await checked.body?.cancel();
    await streamToken(LOG_TOKEN_PATH);
  } catch (error) {
    $("logs-error").textContent = error.message;
    return;
  }
  $("log-lines").replaceChildren();
  logs.lastIds.clear();
  logs.paused = false;
  for (const name of names) followFile(name);
  followingButtons(true);
}

function pauseLogs() {
  if (!logs.paused) {
    // The streams close; their positions stay, and Resume asks for what came meanwhile
    // (the API says when some of it is gone: a gap notice).
    logs.paused = true;
    for (const source of logs.sources.values()) source.close();
    logs.sources.clear();
  } else {
    logs.paused = false;
    const names = [...logs.lastIds.keys()];
    streamToken(LOG_TOKEN_PATH).then(
      () => {
        for (const name of [...$("log-files").querySelectorAll("input:checked")].map((b) => b.value)) {
          if (!names.includes(name) && !logs.sources.has(name)) followFile(name); // nothing read yet
        }
        for (const name of names) followFile(name);
      },
      (error) => {
        $("logs-error").textContent = error.message;
      },
    );
  }
  followingButtons(true);
}

function stopLogs() {
  for (const source of logs.sources.values()) source.close();
  logs.sources.clear();
  logs.paused = false;
  followingButtons(false);
}

// -- streams -----------------------------------------------------------------------------
// Each service's summary of its own metrics (GET /_sluice/streams/<service> through nginx,
// with the key, as any call): open streams now, and from the difference of two summaries
// WINDOW_MS apart, how streams started, ended and were refused, and their latencies.

const POLL_MS = 2000;
const POLL_TIMEOUT_MS = 5000;
const WINDOW_MS = 60000;
const streams = {
  timer: null, // null when not polling
  round: 0, // bumped by each open and close: a poll of an older round is dropped
  closer: new AbortController(), // aborts the polls under way when the page closes
  services: null, // the names nginx routes, once asked
  history: new Map(), // service and instance -> [summary, ...] of the last WINDOW_MS, oldest first
  latest: new Map(), // service -> the history key of its last answer
  failures: new Map(), // service -> what its last poll said, when it failed
};

// One poll at a time: the next is due POLL_MS after the last one ended (a slow service never
// piles polls up behind it).
async function openStreams() {
  if (streams.timer !== null) return;
  const round = streams.round + 1;
  streams.round = round;
  streams.timer = true;
  while (streams.round === round && state.key !== null) {
    await pollStreams(round);
    if (streams.round !== round) return;
    await new Promise((resolve) => {
      streams.timer = setTimeout(resolve, POLL_MS);
    });
  }
}

function closeStreams() {
  if (typeof streams.timer === "number") clearTimeout(streams.timer);
  streams.timer = null;
  streams.round += 1; // a poll under way shows nothing
  streams.closer.abort();
  streams.closer = new AbortController();
  streams.services = null;
  streams.history.clear();
  streams.latest.clear();
  streams.failures.clear();
  $("stream-rows").replaceChildren();
  $("stream-latencies").replaceChildren();
  $("streams-open").textContent = "–";
  $("streams-updated").textContent = "never";
}

async function pollStreams(round) {
  let services = streams.services;
  try {
    if (services === null) {
      const response = await api("/_sluice/services");
      if (!response.ok) throw await failureOf(response);
      services = (await response.json()).services;
    }
  } catch (error) {
    if (streams.round === round) $("streams-error").textContent = `Services: ${error.message}`;
    return;
  }
  const now = Date.now();
  const closer = streams.closer;
  const answers = await Promise.all(
    services.map(async (service) => {
      try {
        // A service that hangs is said to be unreachable after POLL_TIMEOUT_MS; the others
        // still show.
        const signal = AbortSignal.any([closer.signal, AbortSignal.timeout(POLL_TIMEOUT_MS)]);
        const response = await api(`/_sluice/streams/${encodeURIComponent(service)}`, { signal });
        if (!response.ok) throw await failureOf(response);
        return { service, summary: await response.json() };
      } catch (error) {
        const timedOut = error && error.name === "TimeoutError";
        return { service, failure: timedOut ? `no answer in ${POLL_TIMEOUT_MS / 1000} s` : error.message };
      }
    }),
  );
  if (streams.round !== round) return; // left the page, or signed out, meanwhile
  streams.services = services;
  $("streams-error").textContent = "";
  for (const { service, summary, failure } of answers) {
    if (failure !== undefined) {
      streams.failures.set(service, failure);
      continue;
    }
    // Only one replica's summaries compare with each other: the history is per instance,
    // and the page shows the one that answered last.
    summary.polled = now;
    const key = `${service}\n${summary.instance}`;
    const kept = (streams.history.get(key) || []).filter((s) => now - s.polled <= WINDOW_MS);
    kept.push(summary);
    streams.history.set(key, kept);
    streams.latest.set(service, key);
    streams.failures.delete(service);
  }
  showStreams(now);
}

const NOTHING_YET = { started: 0, ended: {}, refused: {}, ttfb: null };

// A counter's growth; a service that restarted meanwhile counts from zero again.
function grown(now, then) {
  return now >= then ? now - then : now;
}

function grownBy(now, then) {
  const out = {};
  for (const [name, value] of Object.entries(now)) {
    const diff = grown(value, (then && then[name]) || 0);
    if (diff > 0) out[name] = diff;
  }
  return out;
}

// The buckets observed between two cumulative histograms (as Prometheus's increase()).
function bucketsGrown(now, then) {
  if (!then || then.le.join() !== now.le.join()) return now;
  if (now.counts.some((count, i) => count < then.counts[i])) return now; // restarted
  return { le: now.le, counts: now.counts.map((c, i) => c - then.counts[i]), count: now.count - then.count };
}

// histogram_quantile: the bucket the q-th observation falls in, linear within it.
function quantile(q, buckets) {
  if (!buckets || buckets.count <= 0) return null;
  const rank = q * buckets.count;
  for (let i = 0; i < buckets.counts.length; i++) {
    if (buckets.counts[i] >= rank) {
      if (i >= buckets.le.length) return buckets.le.length ? buckets.le[buckets.le.length - 1] : null;
      const lower = i === 0 ? 0 : buckets.le[i - 1];
      const below = i === 0 ? 0 : buckets.counts[i - 1];
      const inBucket = buckets.counts[i] - below;
      return lower + (buckets.le[i] - lower) * (inBucket > 0 ? (rank - below) / inBucket : 1);
    }
  }
  return null;
}

function ms(seconds) {
  if (seconds === null) return "–";
  return seconds < 0.01 ? `${(seconds * 1000).toFixed(1)} ms` : `${Math.round(seconds * 1000)} ms`;
}

function tally(counts) {
  const parts = Object.entries(counts).map(([name, n]) => `${name} ${Math.round(n)}`);
  return parts.length ? parts.join(" · ") : "–";
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function showStreams(now) {
  const rows = [];
  const latencies = [];
  let open = 0;
  for (const service of streams.services) {
    const history = streams.history.get(streams.latest.get(service)) || [];
    const failure = streams.failures.get(service);
    if (failure !== undefined) {
      const tr = document.createElement("tr");
      tr.dataset.service = service;
      tr.className = "down";
      const td = cell(`unreachable: ${failure}`);
      td.colSpan = 6;
      tr.append(cell(service), td);
      rows.push(tr);
      if (!history.length) continue;
    }
    if (!history.length) continue;
    const latest = history[history.length - 1];
    const oldest = history[0];
    const seconds = Math.max((latest.at - oldest.at), 0);
    const before = new Map(oldest.routes.map((route) => [route.route, route]));
    for (const route of latest.routes) {
      // A route the older summary lacks had seen nothing yet then.
      const then = oldest === latest ? null : before.get(route.route) || NOTHING_YET;
      open += route.active;
      const tr = document.createElement("tr");
      tr.dataset.service = service;
      tr.dataset.route = route.route;
      tr.dataset.active = String(route.active);
      const started = then ? grown(route.started, then.started) : 0;
      const ttfb = bucketsGrown(route.ttfb, then && then.ttfb);
      tr.append(
        cell(failure === undefined ? service : `${service} (stale)`),
        cell(route.route, "route"),
        cell(String(Math.round(route.active)), "num active"),
        cell(seconds > 0 ? `${((started * 60) / seconds).toFixed(1)}` : "–", "num"),
        cell(tally(then ? grownBy(route.ended, then.ended) : {}), "ended"),
        cell(`${ms(quantile(0.5, ttfb))} / ${ms(quantile(0.99, ttfb))}`, "num"),
        cell(tally(then ? grownBy(route.refused, then.refused) : {}), "refused"),
      );
      tr.title = `since ${service} started: ${Math.round(route.started)} started; ended ${tally(route.ended)}; refused ${tally(route.refused)}`;
      rows.push(tr);
    }
    for (const [name, buckets] of Object.entries(latest.latencies || {})) {
      const grownNow = oldest === latest ? buckets : bucketsGrown(buckets, oldest.latencies[name]);
      const div = document.createElement("div");
      div.dataset.service = service;
      div.dataset.latency = name;
      const dt = document.createElement("dt");
      dt.textContent = `${service}: ${name.replaceAll("_", " ")} p50 / p99`;
      const dd = document.createElement("dd");
      dd.textContent = `${ms(quantile(0.5, grownNow))} / ${ms(quantile(0.99, grownNow))}`;
      div.append(dt, dd);
      latencies.push(div);
    }
  }
  $("stream-rows").replaceChildren(...rows);
  $("stream-latencies").replaceChildren(...latencies);
  $("streams-open").textContent = String(Math.round(open));
  $("streams-updated").textContent = new Date(now).toLocaleTimeString();
  $("stream-empty").hidden = rows.length > 0;
}

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
$("chat-form").addEventListener("submit", send);
$("stop").addEventListener("click", stop);
$("job-form").addEventListener("submit", startJob);
$("job-kind").addEventListener("change", showParams);
$("logs-form").addEventListener("submit", followLogs);
$("log-pause").addEventListener("click", pauseLogs);
$("log-stop").addEventListener("click", stopLogs);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("chat-form").requestSubmit();
});
window.addEventListener("hashchange", show);
show();
