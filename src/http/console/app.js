// micro-tomcat console: one event stream (cluster events + status snapshots), no framework.
"use strict";

(function () {
  const MAX_EVENTS = 300;
  const TOKEN_KEY = "micro-tomcat.admin-token";
  const THEME_KEY = "micro-tomcat.theme";
  const KIND_LABEL = {
    node_up: "up",
    node_down: "down",
    node_left: "left",
    node_draining: "draining",
    leader_changed: "leader",
    config_reloaded: "config",
  };

  const $ = (id) => document.getElementById(id);
  const state = { status: null, events: [], lastSeq: 0, source: null, retryTimer: null };
  const rows = new Map(); // member name -> { tr, cells, button }

  // ---------- small DOM helpers (text only: nothing from the server is parsed as HTML) ----------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function setText(node, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }
  function setClass(node, name) {
    if (node.className !== name) node.className = name;
  }

  // ---------- formatting ----------
  const dash = "–";
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  function fmtInt(v) {
    if (!isNum(v)) return dash;
    if (v >= 1e9) return (v / 1e9).toFixed(v >= 1e10 ? 0 : 1) + "G";
    if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + "M";
    if (v >= 1e4) return (v / 1e3).toFixed(v >= 1e5 ? 0 : 1) + "k";
    return String(Math.round(v));
  }
  function fmtBytes(v) {
    if (!isNum(v)) return dash;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }
  function fmtAgo(ms) {
    if (!isNum(ms)) return dash;
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + " s";
    if (ms < 3600000) return Math.round(ms / 60000) + " min";
    return (ms / 3600000).toFixed(1) + " h";
  }
  function fmtClock(ms) {
    if (!isNum(ms)) return dash;
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }

  // ---------- theme ----------
  function applyTheme(theme) {
    if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
    else delete document.documentElement.dataset.theme;
    setText($("theme-toggle"), "theme: " + (theme === "light" || theme === "dark" ? theme : "auto"));
  }
  function storedTheme() {
    try { return localStorage.getItem(THEME_KEY) || "auto"; } catch (_) { return "auto"; }
  }
  $("theme-toggle").addEventListener("click", () => {
    const next = { auto: "light", light: "dark", dark: "auto" }[storedTheme()] || "auto";
    try { localStorage.setItem(THEME_KEY, next); } catch (_) { /* private mode: not kept */ }
    applyTheme(next);
  });
  applyTheme(storedTheme());

  // ---------- admin token ----------
  function token() {
    try { return localStorage.getItem(TOKEN_KEY) || ""; } catch (_) { return ""; }
  }
  function showTokenState() {
    $("token-toggle").dataset.set = token() ? "true" : "false";
    $("token-toggle").title = token() ? "an admin token is set" : "no admin token set";
  }
  $("token-toggle").addEventListener("click", () => {
    const panel = $("token-panel");
    panel.hidden = !panel.hidden;
    $("token-toggle").setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) { $("token-input").value = token(); $("token-input").focus(); }
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("token-input").value.trim();
    try {
      if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
    } catch (_) { toast("this browser does not keep the token (storage unavailable)", "error"); }
    $("token-panel").hidden = true;
    $("token-toggle").setAttribute("aria-expanded", "false");
    showTokenState();
    toast(value ? "admin token saved" : "admin token cleared", "info");
  });
  $("token-clear").addEventListener("click", () => {
    $("token-input").value = "";
    $("token-form").requestSubmit();
  });
  showTokenState();

  // ---------- toasts ----------
  function toast(message, kind) {
    const node = el("div", { class: "toast " + (kind || ""), role: kind === "error" ? "alert" : "status", text: message });
    $("toasts").append(node);
    setTimeout(() => node.remove(), kind === "error" ? 7000 : 3500);
  }

  // ---------- drain / undrain ----------
  async function setDraining(name, action, button) {
    button.disabled = true;
    button.classList.add("busy");
    setText(button, action === "drain" ? "Draining…" : "Undraining…");
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    try {
      const response = await fetch("/cluster/nodes/" + encodeURIComponent(name) + "/" + action, {
        method: "POST",
        headers,
      });
      let body = null;
      try { body = await response.json(); } catch (_) { /* not JSON */ }
      if (response.ok) {
        toast(name + (action === "drain" ? " is draining: no new work goes there" : " takes work again"), "ok");
      } else {
        const why = (body && body.error) || response.statusText || "failed";
        const hint = response.status === 401 || response.status === 403
          ? " — set the admin token (top right)" : "";
        toast(action + " " + name + ": HTTP " + response.status + " " + why + hint, "error");
      }
    } catch (err) {
      toast(action + " " + name + ": " + err.message, "error");
    } finally {
      button.classList.remove("busy");
      button.dataset.pending = "";
      // The next status snapshot (within a second) redraws the button for the new state.
      if (state.status) renderMembers(state.status);
    }
  }

  // ---------- members ----------
  function makeRow(name) {
    const cells = {
      name: el("span", { class: "name" }),
      marks: el("span", { class: "chips" }),
      addr: el("span", { class: "addr" }),
      state: el("span", { class: "pill badge state" }),
      role: el("span", { class: "pill" }),
      phi: el("td", { class: "num" }),
      seen: el("td", { class: "num" }),
      started: el("td", { class: "dim" }),
      cpuText: el("span"),
      cpuBar: el("span"),
      memory: el("td", { class: "num load" }),
      conns: el("td", { class: "num load" }),
      requests: el("td", { class: "num load" }),
      sessions: el("td", { class: "num load" }),
    };
    const bar = el("span", { class: "bar" }, cells.cpuBar);
    cells.bar = bar;
    const button = el("button", { type: "button", class: "action", "data-node": name });
    button.addEventListener("click", () => {
      const action = button.dataset.action;
      if (!action || button.disabled) return;
      button.dataset.pending = "true";
      setDraining(name, action, button);
    });
    const tr = el("tr", { "data-member": name },
      el("td", {}, el("div", { class: "name-cell" }, cells.name, cells.marks), cells.addr),
      el("td", {}, cells.state),
      el("td", {}, cells.role),
      cells.phi,
      cells.seen,
      cells.started,
      el("td", { class: "num load" }, el("span", { class: "cpu" }, cells.cpuText, bar)),
      cells.memory,
      cells.conns,
      cells.requests,
      cells.sessions,
      el("td", { class: "act" }, button),
    );
    return { tr, cells, button };
  }

  function renderMembers(status) {
    const tbody = document.querySelector("#members tbody");
    const members = (status.members || []).slice().sort((a, b) => a.name.localeCompare(b.name));
    const seen = new Set();
    members.forEach((m, index) => {
      seen.add(m.name);
      let row = rows.get(m.name);
      if (!row) { row = makeRow(m.name); rows.set(m.name, row); }
      if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] || null);
      const c = row.cells;
      const memberState = m.state || "unknown";
      if (row.tr.dataset.state !== memberState) row.tr.dataset.state = memberState;
      setText(c.name, m.name);
      const marks = [];
      if (status.leader === m.name) marks.push(["leader-mark", "★ leader"]);
      if (status.node === m.name) marks.push(["here-mark", "this node"]);
      const marksKey = marks.map((x) => x[1]).join("|");
      if (c.marks.dataset.key !== marksKey) {
        c.marks.dataset.key = marksKey;
        c.marks.replaceChildren(...marks.map(([cls, text]) => el("span", { class: "pill " + cls, text })));
      }
      setText(c.addr, [m.http_addr, m.cluster_addr].filter(Boolean).join("  ·  "));
      setText(c.state, memberState);
      setClass(c.state, "pill badge state s-" + memberState);
      setText(c.role, m.raft_role || dash);
      setClass(c.role, m.raft_role ? "pill role-" + m.raft_role : "dim");
      setText(c.phi, isNum(m.phi) ? m.phi.toFixed(1) : dash);
      setText(c.seen, m.name === status.node ? "self" : fmtAgo(m.last_seen_ms));
      setText(c.started, isNum(m.generation) ? fmtClock(m.generation) : dash);
      c.started.title = isNum(m.generation) ? "generation " + m.generation : "";
      if (isNum(m.cpu_percent)) {
        setText(c.cpuText, m.cpu_percent.toFixed(m.cpu_percent < 10 ? 1 : 0) + "%");
        c.cpuBar.style.width = Math.min(100, Math.max(0, m.cpu_percent)) + "%";
        setClass(c.bar, "bar" + (m.cpu_percent >= 85 ? " hot" : m.cpu_percent >= 60 ? " warm" : ""));
        c.bar.hidden = false;
      } else {
        setText(c.cpuText, dash);
        c.bar.hidden = true;
      }
      setText(c.memory, fmtBytes(m.memory_bytes));
      setText(c.conns, fmtInt(m.active_connections));
      setText(c.requests, fmtInt(m.requests_total));
      c.requests.title = isNum(m.requests_total) ? String(m.requests_total) : "";
      setText(c.sessions, fmtInt(m.sessions));
      const button = row.button;
      if (button.dataset.pending !== "true") {
        const action = memberState === "draining" ? "undrain" : "drain";
        button.dataset.action = action;
        setText(button, action === "drain" ? "Drain" : "Undrain");
        button.disabled = memberState === "down" || memberState === "left";
        button.title = button.disabled
          ? m.name + " is " + memberState
          : action === "drain" ? "stop routing new work to " + m.name : "route work to " + m.name + " again";
      }
    });
    for (const [name, row] of rows) {
      if (!seen.has(name)) { row.tr.remove(); rows.delete(name); }
    }
    // Load columns only once some member publishes load figures.
    const loadKeys = ["cpu_percent", "memory_bytes", "active_connections", "requests_total", "sessions"];
    const hasLoad = members.some((m) => loadKeys.some((key) => isNum(m[key])));
    const table = $("members");
    if (table.dataset.load !== (hasLoad ? "some" : "none")) table.dataset.load = hasLoad ? "some" : "none";
    const counts = { up: 0, down: 0, draining: 0, left: 0 };
    members.forEach((m) => { counts[m.state] = (counts[m.state] || 0) + 1; });
    setText($("up-count"), counts.up);
    setText($("member-count"), members.length);
    const chips = ["down", "draining", "left"]
      .filter((s) => counts[s] > 0)
      .map((s) => el("span", { class: "pill s-" + s, text: counts[s] + " " + s }));
    if (chips.length === 0) chips.push(el("span", { class: "pill s-up", text: "all healthy" }));
    $("state-counts").replaceChildren(...chips);
    setText($("members-note"), members.length + " members, as " + status.node + " sees them");
  }

  // ---------- summary ----------
  function renderSummary(status) {
    setText($("cluster-id"), status.cluster_id || "?");
    setText($("answered"), "via " + status.node);
    document.title = (status.cluster_id || "cluster") + " · micro-tomcat";
    const raft = status.raft || {};
    const leader = status.leader || raft.leader;
    setText($("leader"), leader || "no leader");
    $("leader").classList.toggle("none", !leader);
    setText($("term"), isNum(raft.term) ? "term " + raft.term : "term " + dash);
    const sessions = status.sessions || {};
    setText($("sessions-active"), isNum(sessions.active) ? sessions.active.toLocaleString() : dash);
    setText($("sessions-sub"), (isNum(sessions.max_active) ? "active of " + sessions.max_active.toLocaleString() + " max" : "active")
      + (isNum(sessions.expired_total) ? " · " + sessions.expired_total.toLocaleString() + " expired by " + status.node : ""));
    // The cookie is sent in clear without Secure: say when to turn it on.
    setText($("sessions-cookie"), sessions.cookie_secure === false
      ? "cookie not Secure: set <sessions cookie-secure=\"true\"> once clients come over HTTPS"
      : sessions.cookie_secure === true ? "cookie Secure (HTTPS only)" : "");
    if (isNum(raft.commit_index)) {
      setText($("raft-index"), raft.commit_index.toLocaleString() + " / " + (raft.applied_index || 0).toLocaleString());
      const voters = (raft.voters || []).length;
      const learners = (raft.learners || []).length;
      setText($("raft-sub"), "commit / applied · " + voters + " voter" + (voters === 1 ? "" : "s") +
        (learners ? ", " + learners + " learner" + (learners === 1 ? "" : "s") : ""));
    }
    // Voters live versus needed; absent voters and a lost quorum are said out loud.
    const quorum = raft.quorum || {};
    if (isNum(quorum.live) && isNum(quorum.voters)) {
      const absent = (quorum.absent || []).length ? " · absent: " + quorum.absent.join(", ") : "";
      const verdict = quorum.has_quorum === false ? "NO QUORUM · " : "";
      setText($("raft-quorum"), verdict + quorum.live + " of " + quorum.voters + " voters up, " +
        quorum.needed + " needed" + absent);
      $("raft-quorum").classList.toggle("none", quorum.has_quorum === false);
    }
    const balancer = status.balancer || {};
    setText($("strategy"), balancer.strategy ? balancer.strategy + (balancer.key ? " · by " + balancer.key : "") : dash);
    const receiving = balancer.members || [];
    const chips = receiving.map((name) => el("span", { class: "pill quiet mono", text: name }));
    if (chips.length === 0) chips.push(el("span", { class: "pill s-down", text: "no member takes work" }));
    $("balancer-members").replaceChildren(el("span", { class: "dim", text: "routes to" }), ...chips);
  }

  function renderStatus(status) {
    state.status = status;
    state.lastStatusAt = Date.now();
    if ($("conn").dataset.conn !== "live" && state.source && state.source.readyState === EventSource.OPEN) {
      setConn("live", "live");
    }
    renderSummary(status);
    renderMembers(status);
  }

  // ---------- events ----------
  function eventItem(event, fresh) {
    const label = KIND_LABEL[event.kind] || event.kind;
    return el("li", { class: fresh ? "fresh" : "", "data-seq": String(event.seq), "data-kind": event.kind },
      el("span", { class: "ev-time", title: new Date(event.at_ms).toISOString(), text: fmtClock(event.at_ms) }),
      el("span", { class: "pill k-" + event.kind, text: label }),
      el("span", { class: "ev-body" },
        el("span", { class: "ev-node", text: event.node }), " ",
        el("span", { class: "ev-reason", text: event.reason || "" })),
      el("span", { class: "ev-seq", text: "#" + event.seq }),
    );
  }

  let renderQueued = false;
  function addEvent(event, live) {
    if (event.seq <= state.lastSeq) {
      // The node restarted and numbers from 1 again: what we hold is another incarnation's history.
      state.events = [];
      $("events").replaceChildren();
    }
    state.lastSeq = event.seq;
    state.events.unshift(event);
    if (state.events.length > MAX_EVENTS) state.events.length = MAX_EVENTS;
    if (live) {
      // One at a time once the replay is over, so the new row can flash.
      const list = $("events");
      list.prepend(eventItem(event, true));
      while (list.children.length > MAX_EVENTS) list.lastChild.remove();
      $("events-empty").hidden = true;
    } else if (!renderQueued) {
      renderQueued = true;
      requestAnimationFrame(() => {
        renderQueued = false;
        $("events").replaceChildren(...state.events.map((e) => eventItem(e, false)));
        $("events-empty").hidden = state.events.length > 0;
      });
    }
    if (!live) return;
    // The status snapshot follows shortly; meanwhile show the change on the row at once.
    const row = rows.get(event.node);
    const quick = { node_up: "up", node_down: "down", node_left: "left", node_draining: "draining" }[event.kind];
    if (row && quick && state.status) {
      const member = (state.status.members || []).find((m) => m.name === event.node);
      if (member) { member.state = quick; renderMembers(state.status); }
    }
    if (event.kind === "leader_changed" && state.status) {
      state.status.leader = event.node;
      renderSummary(state.status);
      renderMembers(state.status);
    }
  }

  // ---------- the stream ----------
  function setConn(mode, text) {
    $("conn").dataset.conn = mode;
    setText($("conn-text"), text);
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (state.source) state.source.close();
    // The browser resumes with Last-Event-ID by itself; `after` covers a fresh EventSource.
    const source = new EventSource("/cluster/events?status=true&after=" + state.lastSeq);
    state.source = source;
    // The server sends the remembered events first and the first status snapshot after them:
    // events before that snapshot are replay, events after it are live.
    let replaying = true;
    source.addEventListener("open", () => {
      replaying = true;
      setConn("live", "live");
    });
    source.addEventListener("status", (e) => {
      replaying = false;
      try { renderStatus(JSON.parse(e.data)); } catch (err) { console.warn("bad status", err); }
    });
    for (const kind of Object.keys(KIND_LABEL)) {
      source.addEventListener(kind, (e) => {
        try { addEvent(JSON.parse(e.data), !replaying); } catch (err) { console.warn("bad event", err); }
      });
    }
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (the node answered with an error): try again ourselves.
        setConn("reconnecting", "reconnecting…");
        state.retryTimer = setTimeout(connect, 2000);
      } else {
        setConn("reconnecting", "reconnecting…");
      }
    });
  }

  // A status snapshot by plain GET first, so the page is filled even before the stream opens.
  fetch("/cluster/status", { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : null))
    .then((status) => { if (status && !state.status) renderStatus(status); })
    .catch(() => {});
  connect();

  // Relative figures ("last seen") come from snapshots; flag a stale page if snapshots stop.
  setInterval(() => {
    if (state.source && state.source.readyState === EventSource.OPEN && state.lastStatusAt &&
        Date.now() - state.lastStatusAt > 5000) {
      setConn("reconnecting", "stale");
    }
  }, 1000);
})();
