// The live leaderboard page: the top-10 over EventSource, polling /scores/top when streams fail.
(() => {
  "use strict";

  const POLL_MS = 2000; // polling period while the stream is unavailable
  const STREAM_RETRY_MS = 20000; // how often a polling page tries the stream again
  const HIGHLIGHT_MS = 1600;

  const params = new URLSearchParams(location.search);
  const boardParam = params.get("board");
  const board = boardParam && /^[a-z0-9_-]{1,64}$/.test(boardParam) ? boardParam : "global";
  const base = board === "global" ? "" : `/boards/${board}`;
  const streamUrl = `${base}/scores/stream`;
  const topUrl = `${base}/scores/top?limit=10`;

  const rows = document.getElementById("rows");
  const empty = document.getElementById("empty");
  const statusEl = document.getElementById("status");
  const statusLabel = document.getElementById("status-label");
  const updatedEl = document.getElementById("updated");
  const versionEl = document.getElementById("version");
  document.getElementById("board-name").textContent = board;

  const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  const numbers = new Intl.NumberFormat();
  const byUser = new Map(); // userId -> <li>
  let shown = null; // the version on screen

  function setStatus(state, label) {
    statusEl.dataset.state = state;
    statusLabel.textContent = label;
    document.body.dataset.transport = state;
  }

  function hue(userId) {
    let h = 0;
    for (const c of userId) h = (h * 31 + c.charCodeAt(0)) % 360;
    return h;
  }

  function makeRow(entry) {
    const li = document.createElement("li");
    li.className = "row";
    li.dataset.user = entry.userId;
    const rank = document.createElement("span");
    rank.className = "rank";
    const player = document.createElement("span");
    player.className = "player";
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.style.setProperty("--hue", String(hue(entry.userId)));
    avatar.textContent = entry.userId.slice(0, 2).toUpperCase();
    const user = document.createElement("span");
    user.className = "user";
    user.textContent = entry.userId.slice(0, 8);
    user.title = entry.userId;
    player.append(avatar, user);
    const score = document.createElement("span");
    score.className = "score";
    li.append(rank, player, score);
    return li;
  }

  function flash(el, cls) {
    el.classList.remove(cls);
    void el.offsetWidth; // restart the animation
    el.classList.add(cls);
  }

  function highlight(li, cls) {
    li.classList.remove("up", "down");
    li.classList.add(cls);
    clearTimeout(li._fade);
    li._fade = setTimeout(() => li.classList.remove(cls), HIGHLIGHT_MS);
  }

  function render(top) {
    if (!top || !Array.isArray(top.entries)) return;
    if (shown !== null && top.version === shown && rows.children.length === top.entries.length) {
      return;
    }
    // FLIP: remember where each row was, reorder, then animate from there to here.
    const before = new Map();
    for (const li of rows.children) before.set(li.dataset.user, li.getBoundingClientRect().top);
    const keep = new Set();
    top.entries.forEach((entry) => {
      let li = byUser.get(entry.userId);
      const previous = li ? { rank: Number(li.dataset.rank), score: Number(li.dataset.score) } : null;
      if (!li) {
        li = makeRow(entry);
        byUser.set(entry.userId, li);
      }
      li.dataset.rank = String(entry.rank);
      li.dataset.score = String(entry.score);
      li.querySelector(".rank").textContent = String(entry.rank);
      const score = li.querySelector(".score");
      score.textContent = numbers.format(entry.score);
      if (previous && previous.score !== entry.score) flash(score, "bump");
      if (previous && previous.rank > entry.rank) highlight(li, "up");
      else if (previous && previous.rank < entry.rank) highlight(li, "down");
      keep.add(entry.userId);
      rows.appendChild(li); // appending in order moves existing rows into place
    });
    for (const [user, li] of byUser) {
      if (!keep.has(user)) {
        li.remove();
        byUser.delete(user);
      }
    }
    if (!reduceMotion && typeof Element.prototype.animate === "function") {
      for (const li of rows.children) {
        const from = before.get(li.dataset.user);
        const to = li.getBoundingClientRect().top;
        if (from === undefined) {
          li.animate(
            [{ opacity: 0, transform: "translateY(10px)" }, { opacity: 1, transform: "none" }],
            { duration: 320, easing: "ease-out" },
          );
        } else if (from !== to) {
          li.animate([{ transform: `translateY(${from - to}px)` }, { transform: "none" }], {
            duration: 520,
            easing: "cubic-bezier(.2,.8,.2,1)",
          });
        }
      }
    }
    empty.hidden = top.entries.length > 0;
    shown = top.version;
    rows.dataset.version = String(top.version);
    versionEl.textContent = `v${top.version}`;
    const at = top.updatedAt ? new Date(top.updatedAt) : null;
    updatedEl.textContent = at && !Number.isNaN(at.getTime())
      ? `Updated ${at.toLocaleTimeString()}`
      : "Updated";
  }

  // Polling fallback: /scores/top with If-None-Match, so an unchanged board costs a 304.
  let etag = null;
  let pollTimer = null;

  async function poll() {
    pollTimer = null;
    try {
      const headers = etag ? { "If-None-Match": etag } : {};
      const response = await fetch(topUrl, { headers, cache: "no-store" });
      if (response.status === 200) {
        etag = response.headers.get("ETag");
        render(await response.json());
        if (!source) setStatus("polling", "Polling");
      } else if (response.status === 304) {
        if (!source) setStatus("polling", "Polling");
      } else if (!source) {
        setStatus("offline", "Offline");
      }
    } catch (_) {
      if (!source) setStatus("offline", "Offline");
    }
    if (polling) pollTimer = setTimeout(poll, POLL_MS);
  }

  let polling = false;

  function startPolling() {
    if (polling) return;
    polling = true;
    setStatus("polling", "Polling");
    poll();
  }

  function stopPolling() {
    polling = false;
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }

  // The stream: the browser reconnects by itself after a drop; a stream that fails before
  // opening, or twice without opening in between, is given up for polling and retried later.
  let source = null;
  let retryTimer = null;

  function connect() {
    retryTimer = null;
    if (typeof EventSource !== "function") {
      startPolling();
      return;
    }
    let opened = false;
    let failures = 0;
    const es = new EventSource(streamUrl);
    source = es;
    es.addEventListener("open", () => {
      opened = true;
      failures = 0;
      stopPolling();
      setStatus("live", "Live");
    });
    es.addEventListener("top", (event) => {
      try {
        render(JSON.parse(event.data));
      } catch (_) {
        /* a malformed event is skipped; the next one carries the whole board again */
      }
    });
    es.addEventListener("error", () => {
      failures += 1;
      if (es.readyState === EventSource.CLOSED || !opened || failures >= 2) {
        es.close();
        if (source === es) source = null;
        startPolling();
        if (retryTimer === null) retryTimer = setTimeout(connect, STREAM_RETRY_MS);
      } else {
        opened = false;
        setStatus("connecting", "Reconnecting");
      }
    });
  }

  connect();
})();
