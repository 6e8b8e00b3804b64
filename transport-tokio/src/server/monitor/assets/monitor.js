// The Colony monitor page: polls api/status every second and redraws the tables.
// Every value from the server is inserted as text, never as markup.
'use strict';

const POLL_MS = 1000;

function $(id) { return document.getElementById(id); }

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function num(n) { return Number(n).toLocaleString('en-US'); }

function duration(ms) {
  if (ms === null || ms === undefined || !isFinite(ms)) return '–';
  const s = Math.max(0, ms / 1000);
  if (s < 10) return s.toFixed(1) + ' s';
  if (s < 60) return Math.round(s) + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return m + ' min ' + Math.round(s - m * 60) + ' s';
  const h = Math.floor(m / 60);
  if (h < 48) return h + ' h ' + (m - h * 60) + ' min';
  return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
}

function clock(ms) {
  const d = new Date(ms);
  const today = new Date();
  const time = d.toLocaleTimeString('en-GB');
  return d.toDateString() === today.toDateString() ? time : d.toISOString().slice(0, 10) + ' ' + time;
}

function rate(r) {
  if (r === null || r === undefined) return '–';
  if (r >= 100) return num(Math.round(r)) + '/s';
  return r.toFixed(1) + '/s';
}

function fill(tbody, rows, columns, empty) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    tbody.append(el('tr', {}, el('td', { class: 'empty', colspan: columns }, empty)));
    return;
  }
  for (const row of rows) tbody.append(row);
}

function progressBar(job) {
  const total = Math.max(job.total, 1);
  const pct = (n) => (100 * n / total).toFixed(2) + '%';
  const settled = job.done + job.failed;
  const bar = el('div', { class: 'bar', title: `${num(job.done)} done, ${num(job.failed)} failed, ${num(job.running)} running of ${num(job.total)}` });
  const done = el('span', { class: 'done' });
  done.style.width = pct(job.done);
  const failed = el('span', { class: 'failed' });
  failed.style.left = pct(job.done);
  failed.style.width = pct(job.failed);
  const running = el('span', { class: 'running' });
  running.style.left = pct(settled);
  running.style.width = pct(Math.min(job.running, job.total - settled));
  const label = el('span', { class: 'pct' }, job.total === 0 ? 'empty' : (100 * settled / total).toFixed(1) + '%');
  bar.append(done, failed, running, label);
  return bar;
}

// The failed count, linked to the failures' errors when there are some.
function failures(job) {
  if (!job.failed) return num(0);
  return el('a', { href: 'api/jobs/' + job.id + '/failures', title: 'the last error of each failed task' },
    num(job.failed));
}

function jobRow(job) {
  let state = el('span', { class: 'state running' }, 'running');
  if (job.finished) {
    state = job.failed > 0
      ? el('span', { class: 'state failed' }, 'finished, ' + num(job.failed) + ' failed')
      : el('span', { class: 'state finished' }, 'finished');
  }
  return el('tr', { 'data-job-id': job.id, 'data-done': job.done, 'data-failed': job.failed, 'data-total': job.total },
    el('td', { class: 'num' }, job.id),
    el('td', {}, job.name),
    el('td', {}, progressBar(job)),
    el('td', { class: 'num job-done' }, num(job.done) + ' / ' + num(job.total)),
    el('td', { class: 'num' + (job.failed ? ' fail' : '') }, failures(job)),
    el('td', { class: 'num' }, num(job.running)),
    el('td', { class: 'num' }, rate(job.rate)),
    el('td', { class: 'num' }, job.finished ? '–' : duration(job.eta_s === null ? null : job.eta_s * 1000)),
    el('td', {}, state));
}

function workerRow(w, now) {
  const beat = w.last_heartbeat_ms;
  const beatCell = el('td', { class: 'num' + (beat !== null && beat > 5000 ? ' stale' : '') },
    beat === null ? 'none yet' : duration(beat) + ' ago');
  return el('tr', { 'data-worker-name': w.name, 'data-worker-id': w.id },
    el('td', {}, w.name),
    el('td', {}, w.platform),
    el('td', { class: 'mono' }, w.transport + '://' + w.address),
    el('td', { class: 'num' }, num(w.slots)),
    el('td', { class: 'num' }, num(w.running)),
    el('td', { class: 'num' }, num(w.done)),
    el('td', { class: 'num' + (w.failed ? ' fail' : '') }, num(w.failed)),
    beatCell,
    el('td', {}, clock(w.connected_ms) + ' (' + duration(now - w.connected_ms) + ')'),
    el('td', { class: 'kinds' }, w.kinds.join(', ')));
}

function clientRow(c, now) {
  return el('tr', { 'data-client-name': c.name },
    el('td', {}, c.name),
    el('td', { class: 'mono' }, c.transport + '://' + c.address),
    el('td', { class: 'num' }, num(c.in_flight)),
    el('td', { class: 'num' }, num(c.jobs)),
    el('td', {}, clock(c.connected_ms) + ' (' + duration(now - c.connected_ms) + ')'));
}

function render(s) {
  const now = s.now_ms;
  $('address').textContent = s.address;
  $('tls').hidden = !s.tls;
  $('version').textContent = 'colony ' + s.version;
  $('uptime').textContent = duration(now - s.started_ms);
  $('n-workers').textContent = num(s.workers.length);
  const slots = s.workers.reduce((n, w) => n + w.slots, 0);
  $('n-slots').textContent = num(slots) + (slots === 1 ? ' slot' : ' slots');
  $('n-clients').textContent = num(s.clients.length);
  const active = s.jobs.filter((j) => !j.finished).length;
  $('n-jobs').textContent = num(s.jobs.length);
  $('n-jobs-sub').textContent = num(active) + ' running, ' + num(s.jobs.length - active) + ' finished';
  const total = s.jobs.reduce((n, j) => n + (j.rate || 0), 0);
  $('rate').textContent = s.jobs.some((j) => j.rate !== null) ? rate(total).replace('/s', '') : '–';
  fill($('jobs').tBodies[0], s.jobs.map(jobRow), 9, 'No jobs yet');
  fill($('workers').tBodies[0], s.workers.map((w) => workerRow(w, now)), 10, 'No workers connected');
  fill($('clients').tBodies[0], s.clients.map((c) => clientRow(c, now)), 5, 'No task clients connected');
  $('updated').textContent = clock(now);
}

function setLive(ok, why) {
  $('live-dot').className = 'dot ' + (ok ? 'on' : 'off');
  $('live-text').textContent = ok ? 'live' : 'disconnected' + (why ? ' (' + why + ')' : '');
  document.body.dataset.live = ok ? 'yes' : 'no';
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const response = await fetch('api/status', { cache: 'no-store' });
    if (!response.ok) throw new Error('HTTP ' + response.status);
    render(await response.json());
    setLive(true);
  } catch (e) {
    setLive(false, e.message);
  } finally {
    busy = false;
  }
}

refresh();
setInterval(refresh, POLL_MS);
