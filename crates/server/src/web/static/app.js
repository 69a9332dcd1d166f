// buildman dashboard. The API token lives in the browser's storage (sessionStorage, or
// localStorage when the user asks to be remembered) and goes only into Authorization
// headers, never into a URL. The pages are shells: the builds list and a build's summary
// are HTML fragments rendered by the server, the log comes from the followed-log API
// (Server-Sent Events, read with fetch because EventSource cannot send the token).
'use strict';
(() => {
  const KEY = 'buildman-token';
  const MAX_LINES = 20000; // log lines kept on the page; older ones are dropped
  const $ = (selector) => document.querySelector(selector);
  const token = () => sessionStorage.getItem(KEY) || localStorage.getItem(KEY);
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

  function toLogin() {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
    const here = location.pathname + location.search + location.hash;
    location.assign('/login?next=' + encodeURIComponent(here));
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: 'Bearer ' + token() }, options.headers);
    const response = await fetch(path, Object.assign({}, options, { headers, cache: 'no-store' }));
    if (response.status === 401) {
      toLogin();
      throw new Error('the token was refused');
    }
    return response;
  }

  async function errorText(response) {
    try {
      return (await response.json()).error || response.statusText;
    } catch {
      return response.statusText || 'HTTP ' + response.status;
    }
  }

  // Spans of time still growing: data-since is their start, in ms since the epoch.
  function span(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const pad = (n) => String(n).padStart(2, '0');
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + pad(s % 60) + 's';
    return Math.floor(s / 3600) + 'h ' + pad(Math.floor((s % 3600) / 60)) + 'm';
  }
  setInterval(() => {
    for (const el of document.querySelectorAll('[data-since]')) {
      el.textContent = span(Date.now() - Number(el.dataset.since));
    }
  }, 1000);

  function loginPage() {
    $('#login').addEventListener('submit', async (event) => {
      event.preventDefault();
      const value = $('#token').value.trim();
      const error = $('#login-error');
      error.textContent = '';
      const answer = await fetch('/api/v1/builds?limit=1', {
        headers: { Authorization: 'Bearer ' + value },
        cache: 'no-store',
      });
      if (!answer.ok) {
        error.textContent = answer.status === 401 ? 'That token was refused.' : await errorText(answer);
        return;
      }
      ($('#remember').checked ? localStorage : sessionStorage).setItem(KEY, value);
      const next = new URLSearchParams(location.search).get('next') || '/';
      location.assign(next.startsWith('/') && !next.startsWith('//') ? next : '/');
    });
  }

  // The list asks for its rows again as soon as it got them: the server answers when they
  // change (or 304 after a while), so the list follows every build without reloading.
  function listPage() {
    const form = $('#filters');
    const rows = $('#rows');
    const status = $('#list-status');
    const params = new URLSearchParams(location.search);
    for (const field of form.elements) {
      if (field.name && params.has(field.name)) field.value = params.get(field.name);
    }
    let generation = 0;
    let controller = null;
    async function poll(mine, query) {
      let etag = null;
      let failures = 0;
      while (mine === generation) {
        try {
          const headers = etag ? { 'If-None-Match': etag } : {};
          const answer = await api('/ui/fragments/builds?' + query, { headers, signal: controller.signal });
          if (answer.status === 200) {
            rows.innerHTML = await answer.text();
            etag = answer.headers.get('ETag');
            const n = rows.querySelectorAll('tr[data-id]').length;
            status.textContent = n + (n === 1 ? ' build' : ' builds') + ', updated live';
          } else if (answer.status !== 304) {
            status.textContent = await errorText(answer);
            await sleep(5000);
          }
          failures = 0;
        } catch (error) {
          if (mine !== generation) return;
          failures += 1;
          status.textContent = 'Connection lost; retrying…';
          await sleep(Math.min(10000, 250 * 2 ** failures));
        }
      }
    }
    function restart() {
      const query = new URLSearchParams();
      for (const field of form.elements) {
        if (field.name && field.value.trim()) query.set(field.name, field.value.trim());
      }
      history.replaceState(null, '', query.toString() ? '?' + query : location.pathname);
      if (controller) controller.abort();
      controller = new AbortController();
      generation += 1;
      poll(generation, query);
    }
    let timer = null;
    form.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(restart, 300);
    });
    form.addEventListener('submit', (event) => event.preventDefault());
    restart();
  }

  function buildPage() {
    const id = document.body.dataset.build;
    const summary = $('#summary');
    const log = $('#log');
    const status = $('#log-status');
    const jump = $('#jump');
    let next = 0; // index of the next log entry wanted
    let open = null; // the line a chunk of an over-long line goes on in
    let stick = true; // follow the newest line until the user scrolls up
    let target = location.hash.slice(1) || null; // a line linked to, shown once it arrives

    async function refresh() {
      const answer = await api('/ui/fragments/builds/' + encodeURIComponent(id));
      if (!answer.ok) {
        summary.textContent = await errorText(answer);
        return null;
      }
      summary.innerHTML = await answer.text();
      const holder = summary.querySelector('[data-logs]');
      return holder ? holder.dataset.logs : null;
    }

    summary.addEventListener('click', async (event) => {
      const button = event.target.closest('#cancel');
      if (!button || !confirm('Cancel this build?')) return;
      button.disabled = true;
      const answer = await api(button.dataset.url, { method: 'DELETE' });
      if (!answer.ok) status.textContent = 'Cancel refused: ' + (await errorText(answer));
      await refresh();
    });

    log.addEventListener('scroll', () => {
      stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      jump.hidden = stick;
    });
    jump.addEventListener('click', () => {
      stick = true;
      jump.hidden = true;
      log.scrollTop = log.scrollHeight;
      log.focus();
    });

    function addPhase(entry) {
      const item = document.createElement('li');
      const badge = document.createElement('span');
      badge.className = 'phase phase-idle';
      badge.textContent = entry.message;
      const when = document.createElement('time');
      const at = entry.data && entry.data.datetime;
      if (at) {
        when.dateTime = at;
        when.textContent = new Date(at).toLocaleTimeString();
      }
      item.append(badge, when);
      $('#timeline').append(item);
    }

    function addLine(into, index, kind, text) {
      const line = document.createElement('div');
      line.className = 'line' + (kind ? ' ' + kind : '');
      const msg = document.createElement('span');
      msg.className = 'msg';
      msg.textContent = text;
      if (index !== null) {
        line.id = 'L' + (index + 1);
        const link = document.createElement('a');
        link.className = 'ln';
        link.href = '#' + line.id;
        link.textContent = index + 1;
        line.append(link);
      }
      line.append(msg);
      into.append(line);
      return line;
    }

    const KINDS = { command: 'step', error: 'err', phase: 'phase-entry' };
    function addEntry(into, entry) {
      const continues = Boolean(entry.data && entry.data.continues === true);
      if (open) {
        const msg = open.querySelector('.msg');
        msg.textContent += entry.message;
        if (!continues) msg.textContent = msg.textContent.replace(/\n$/, '');
      } else {
        const text = continues ? entry.message : entry.message.replace(/\n$/, '');
        const line = addLine(into, entry.index, KINDS[entry.type] || '', text);
        if (continues) open = line;
      }
      if (!continues) open = null;
      if (entry.type === 'phase') addPhase(entry);
    }

    function show(batch) {
      log.append(batch);
      while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
      const linked = target && document.getElementById(target);
      if (linked) {
        target = null;
        stick = false;
        jump.hidden = false;
        linked.scrollIntoView({ block: 'center' });
      } else if (stick) {
        log.scrollTop = log.scrollHeight;
      }
    }

    // One SSE event; true when the build is over and the stream ends for good. The summary
    // is fetched again once per chunk read, however many phases the chunk held (`stale`).
    let stale = false;
    function handle(batch, event, data) {
      if (!data) return false;
      const body = JSON.parse(data);
      if (event === 'entry' && body.index >= next) {
        addEntry(batch, body);
        next = body.index + 1;
      } else if (event === 'phase') {
        stale = true;
      } else if (event === 'retry') {
        const at = body.at ? ' at ' + new Date(body.at).toLocaleTimeString() : '';
        addLine(batch, null, 'note', 'Attempt ' + body.attempt + ' runs' + at);
        stale = true;
      } else if (event === 'lagged') {
        next = body.next;
      } else if (event === 'end') {
        status.textContent = 'The build is over: ' + body.build.phase;
        stale = true;
        return true;
      }
      return false;
    }

    function parse(block) {
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
      return [event, data.join('\n')];
    }

    // Follows the log to its end, resuming from the next entry after any break.
    async function follow(logs) {
      let failures = 0;
      for (;;) {
        try {
          const answer = await api(logs + '?follow=1&start=' + next, {
            headers: { Accept: 'text/event-stream' },
          });
          if (!answer.ok) throw new Error(await errorText(answer));
          status.textContent = 'Following live';
          failures = 0;
          const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value.replace(/\r\n?/g, '\n');
            const batch = document.createDocumentFragment();
            let ended = false;
            let cut;
            while ((cut = buffer.indexOf('\n\n')) >= 0) {
              const [event, data] = parse(buffer.slice(0, cut));
              buffer = buffer.slice(cut + 2);
              ended = handle(batch, event, data) || ended;
            }
            show(batch);
            if (stale) {
              stale = false;
              refresh();
            }
            if (ended) return;
          }
        } catch (error) {
          failures += 1;
          status.textContent = 'Connection lost (' + error.message + '); reconnecting…';
        }
        await sleep(Math.min(10000, 250 * 2 ** failures));
      }
    }

    refresh().then((logs) => {
      if (logs) follow(logs);
    });
  }

  const page = document.body.dataset.page;
  if (page === 'login') {
    loginPage();
    return;
  }
  if (page !== 'list' && page !== 'build') return;
  if (!token()) {
    toLogin();
    return;
  }
  const logout = $('#logout');
  logout.hidden = false;
  logout.addEventListener('click', toLogin);
  if (page === 'list') listPage();
  else buildPage();
})();
