// Kindling's dashboard: the fleet, the boot storm and one machine, live from the event stream.
//
// No framework and no build step: this file is embedded in the daemon as written. Everything
// a machine reports (hostname, facts, labels) is set with textContent, never parsed as HTML;
// the page's Content-Security-Policy allows only this script and app.css.
'use strict';

const STATES = ['unknown', 'discovered', 'waking', 'dhcp', 'firmware', 'ipxe', 'kernel',
  'config', 'provisioned', 'stalled'];
const PHASES = ['waking', 'dhcp', 'firmware', 'ipxe', 'kernel', 'config', 'provisioned'];
const TOKEN_KEY = 'kindling-api-token';

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
};

// The page's whole state.
const S = {
  machines: new Map(), // mac -> summary (as /api/v1/machines lists it)
  rows: new Map(), // mac -> <tr>
  status: null, // /api/v1/status
  skew: 0, // server clock - browser clock, ms
  sort: { key: 'mac', dir: 1 },
  dirty: new Set(), // rows to redraw
  relist: true, // rows to re-filter and re-sort
  view: null,
  machine: null, // the open machine page's record
  preview: 'ipxe',
  rendered: false, // the fleet table was first drawn (performance mark)
  orphans: [], // MACs shown that no profile knows
  bulkArmed: false, // the bulk adoption awaits its second click
  wakeArmed: false, // the group wake awaits its second click
  visible: new Set(), // MACs of the rows on screen
  relisted: 0, // when the rows were last sorted and filtered (performance.now())
  live: false,
  canRead: true,
};

// ---- the API --------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function headers(extra) {
  const h = Object.assign({ Accept: 'application/json' }, extra || {});
  if (token()) h.Authorization = 'Bearer ' + token();
  return h;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: headers(body ? { 'Content-Type': 'application/json' } : {}) };
  if (body) opts.body = JSON.stringify(body);
  const res = await fetch(path, opts);
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!res.ok) {
    let msg = (data && data.error) || text || res.statusText;
    if (data && Array.isArray(data.errors)) msg += '\n' + data.errors.join('\n');
    throw new ApiError(res.status, msg);
  }
  return data;
}

function now() {
  return Date.now() + S.skew;
}

function ms(stamp) {
  return stamp ? Date.parse(stamp) : NaN;
}

function duration(msecs) {
  if (!isFinite(msecs)) return '';
  const s = Math.max(0, Math.round(msecs / 1000));
  if (s < 60) return s + 's';
  // Minutes from here: a column of times that all change every second repaints the page
  // every second.
  const m = Math.floor(s / 60);
  if (m < 60) return m + 'm';
  const h = Math.floor(m / 60);
  if (h < 48) return h + 'h ' + (m % 60) + 'm';
  return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
}

function firmware(m) {
  if (!m.platform && !m.arch) return '';
  return [m.platform === 'pcbios' ? 'BIOS' : m.platform === 'efi' ? 'UEFI' : m.platform, m.arch]
    .filter(Boolean).join(' ');
}

function nextBoot(m) {
  const n = m.next_boot;
  if (!n) return '';
  return n.boot === 'profile' ? 'profile ' + n.profile : n.boot;
}

function facts(m) {
  const h = m.hardware || {};
  const parts = [[h.manufacturer, h.product].filter(Boolean).join(' ')];
  if (h.serial) parts.push('S/N ' + h.serial);
  if (h.memory) parts.push(memory(h.memory));
  return parts.filter(Boolean).join(' · ');
}

function memory(mib) {
  const n = Number(mib);
  if (!isFinite(n)) return String(mib);
  return n >= 1024 ? (n / 1024).toFixed(n % 1024 ? 1 : 0) + ' GiB' : n + ' MiB';
}

function stateText(m) {
  return m.state === 'stalled' && m.stalled_in ? 'stalled (' + m.stalled_in + ')' : m.state;
}

function badge(node, m) {
  node.textContent = stateText(m);
  node.className = 'badge s-' + m.state;
}

// ---- the fleet ------------------------------------------------------------------------------

function row(m) {
  let tr = S.rows.get(m.mac);
  if (!tr) {
    tr = $('row-template').content.firstElementChild.cloneNode(true);
    tr.dataset.mac = m.mac;
    const a = tr.querySelector('.mac a');
    a.textContent = m.mac;
    a.href = '#/m/' + m.mac;
    S.rows.set(m.mac, tr);
    onScreen.observe(tr);
  }
  return tr;
}

// The rows on screen: only their "in state" times move on every second (changing thousands of
// cells a second would lay the whole table out again each time).
const onScreen = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const mac = e.target.dataset.mac;
    if (e.isIntersecting) {
      S.visible.add(mac);
      const m = S.machines.get(mac);
      since(e.target, m, now());
      if (m && m.stale) refreshMachine(mac);
    } else {
      S.visible.delete(mac);
    }
  }
}, { rootMargin: '200px 0px' });

function since(tr, m, t) {
  if (!m) return;
  const text = duration(t - ms(m.state_since));
  const c = tr.querySelector('.since');
  if (c.textContent !== text) c.textContent = text;
}

function drawRow(m) {
  const tr = row(m);
  const cell = (cls, text) => {
    const c = tr.querySelector('.' + cls);
    if (c.textContent !== text) c.textContent = text;
  };
  cell('hostname', m.hostname || '');
  cell('profile', m.profile || '');
  cell('ip', m.ip || '');
  cell('firmware', firmware(m));
  badge(tr.querySelector('.state .badge'), m);
  cell('since', duration(now() - ms(m.state_since)));
  cell('next', nextBoot(m));
  cell('facts', facts(m));
  tr.classList.toggle('stalled', m.state === 'stalled');
  tr.classList.toggle('discovered', m.state === 'discovered');
  tr.querySelector('[data-action="adopt-open"]').hidden = !!m.profile && m.state !== 'discovered';
  tr.querySelector('[data-action="reinstall"]').hidden = !m.profile;
  tr.querySelector('[data-action="wake"]').hidden = !canWake(m);
  lockButtons(tr);
}

// A machine is woken through its BMC when it has one, else with Wake-on-LAN (when it is on).
function canWake(m) {
  return !!m.bmc || !S.status || !!S.status.wol;
}

// What its BMC last said: "on, read 12:00:01", or the error after the last good reading.
function powerText(p) {
  if (!p) return '';
  const last = p.state && p.read_at
    ? p.state + ', read ' + new Date(ms(p.read_at)).toLocaleString() : 'never read';
  return p.error ? 'ERROR ' + p.error + ' (' + last + ')' : last;
}

function matches(m, text, state, profile) {
  // A phase also lists the machines stalled in it.
  if (state && m.state !== state && !(m.state === 'stalled' && m.stalled_in === state)) return false;
  if (profile && (m.profile || '') !== profile) return false;
  if (!text) return true;
  const hay = [m.mac, m.hostname, m.profile, m.ip, stateText(m), firmware(m), facts(m)]
    .concat(Object.entries(m.labels || {}).map(([k, v]) => k + '=' + v))
    .join(' ').toLowerCase();
  return text.split(/\s+/).every((w) => hay.includes(w));
}

function sortValue(m, key) {
  switch (key) {
    case 'state': return STATES.indexOf(m.state);
    case 'since': return -ms(m.state_since);
    case 'firmware': return firmware(m);
    case 'next': return nextBoot(m);
    case 'ip': return m.ip ? m.ip.split('.').map((o) => o.padStart(3, '0')).join('.') : '~';
    default: return (m[key] || '~').toString().toLowerCase();
  }
}

function relist() {
  const text = $('filter').value.trim().toLowerCase();
  const state = $('state-filter').value;
  const profile = $('profile-filter').value;
  const { key, dir } = S.sort;
  const list = [...S.machines.values()].filter((m) => matches(m, text, state, profile));
  list.sort((a, b) => {
    const x = sortValue(a, key);
    const y = sortValue(b, key);
    return (x < y ? -1 : x > y ? 1 : a.mac < b.mac ? -1 : 1) * dir;
  });
  const body = $('fleet').tBodies[0];
  const frag = document.createDocumentFragment();
  for (const m of list) frag.appendChild(row(m));
  body.replaceChildren(frag);
  if (list.length && !S.rendered) {
    S.rendered = true;
    performance.mark('kindling-first-render');
  }
  S.shown = list;
  drawBulk(list);
  $('shown').textContent = list.length === S.machines.size ? S.machines.size + ' machines'
    : list.length + ' of ' + S.machines.size + ' machines';
  $('empty').hidden = S.machines.size > 0;
  for (const th of $('fleet').tHead.rows[0].cells) {
    th.classList.toggle('sorted', th.dataset.sort === key);
    th.classList.toggle('desc', th.dataset.sort === key && dir < 0);
  }
}

// Machines shown that no profile knows (discovered, or seen on the network): adopt them all
// into one profile, as a rack powered on with only its MAC prefix known is enrolled.
function drawBulk(list) {
  drawBulkWake(list);
  const orphans = list.filter((m) => !m.profile);
  S.orphans = orphans.map((m) => m.mac);
  $('bulk').hidden = orphans.length === 0;
  if (!orphans.length) return;
  const n = orphans.length;
  $('bulk-text').textContent = n + (n === 1 ? ' machine' : ' machines') + ' shown belong to no profile:';
  fillSelect($('bulk-profile'), (S.status && S.status.profile_names) || [], null);
  if (!S.bulkArmed) $('bulk-adopt').textContent = 'Adopt ' + (n === 1 ? 'it' : 'all ' + n);
  lockButtons($('bulk'));
}

// Machines shown that have not booted or are stuck (never one that is booting or installed:
// through its BMC, a wake restarts a machine that is on): wake them all, paced.
function drawBulkWake(list) {
  const idle = list.filter((m) => canWake(m) && (m.state === 'unknown' || m.state === 'stalled'));
  S.toWake = idle.map((m) => m.mac);
  $('bulk-wake').hidden = idle.length === 0;
  if (!idle.length) return;
  const n = idle.length;
  $('bulk-wake-text').textContent = n + (n === 1 ? ' machine' : ' machines') +
    ' shown have not booted or are stalled:';
  if (!S.wakeArmed) $('bulk-wake-go').textContent = 'Wake ' + (n === 1 ? 'it' : 'all ' + n);
  lockButtons($('bulk-wake'));
}

async function bulkWake() {
  // As they are now: one that started booting since the list was drawn is left alone.
  const macs = (S.toWake || []).filter((mac) => {
    const m = S.machines.get(mac);
    return m && (m.state === 'unknown' || m.state === 'stalled');
  });
  const stagger = Number($('bulk-wake-stagger').value);
  if (!macs.length) {
    S.wakeArmed = false;
    say('nothing to wake: the machines shown have started booting', false);
    S.relist = true;
    schedule();
    return;
  }
  if (!S.wakeArmed) {
    // A second click does it: one click must not power on a rack.
    S.wakeArmed = true;
    $('bulk-wake-go').textContent = 'Click again: wake ' + macs.length + ', one every ' + stagger + ' ms';
    setTimeout(() => { S.wakeArmed = false; S.relist = true; schedule(); }, 5000);
    return;
  }
  S.wakeArmed = false;
  say('waking ' + macs.length + ', one every ' + stagger + ' ms…', false);
  try {
    const r = await api('POST', '/api/v1/wake', { macs, stagger_ms: stagger });
    const failed = r.failed || [];
    say('woke ' + (r.woken || []).length + ' of ' + macs.length +
      (failed.length ? '; failed: ' + failed.map((f) => f.mac + ': ' + f.error).join('; ') : ''),
    failed.length > 0);
  } catch (e) {
    say('wake ' + macs.length + ': ' + e.message + ' (HTTP ' + e.status + ')', true);
  }
  for (const mac of macs) refreshMachine(mac);
  S.relist = true;
  schedule();
}

async function bulkAdopt() {
  const macs = S.orphans || [];
  const profile = $('bulk-profile').value;
  if (!S.bulkArmed) {
    // A second click does it: one click must not enroll a rack into the wrong profile.
    S.bulkArmed = true;
    $('bulk-adopt').textContent = 'Click again: adopt ' + macs.length + ' into ' + profile;
    setTimeout(() => { S.bulkArmed = false; S.relist = true; schedule(); }, 5000);
    return;
  }
  S.bulkArmed = false;
  const failed = [];
  let done = 0;
  for (const mac of macs) {
    say('adopting ' + (done + failed.length + 1) + ' of ' + macs.length + ' into ' + profile + '…', false);
    try {
      await api('POST', '/api/v1/machines/' + mac + '/adopt', { profile });
      done++;
      refreshMachine(mac);
    } catch (e) {
      failed.push(mac + ': ' + e.message + ' (HTTP ' + e.status + ')');
    }
  }
  say('adopted ' + done + ' of ' + macs.length + ' into ' + profile +
    (failed.length ? '; failed: ' + failed.join('; ') : ''), failed.length > 0);
  loadStatus();
}

function counts() {
  const n = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const m of S.machines.values()) n[m.state] = (n[m.state] || 0) + 1;
  return n;
}

function drawCounts() {
  const n = counts();
  const box = $('counts');
  if (!box.childElementCount) {
    for (const s of STATES) {
      const b = el('button', 'count s-' + s);
      b.type = 'button';
      b.dataset.state = s;
      b.append(el('span', 'n', 0), el('span', 'label', s));
      b.id = 'count-' + s;
      b.addEventListener('click', () => {
        $('state-filter').value = $('state-filter').value === s ? '' : s;
        S.relist = true;
        schedule();
      });
      box.appendChild(b);
    }
  }
  for (const s of STATES) {
    const b = $('count-' + s);
    b.querySelector('.n').textContent = n[s];
    b.classList.toggle('zero', n[s] === 0);
  }
}

// Set a select's options to `values`, after a placeholder option ('' value) when given.
function fillSelect(select, values, placeholder) {
  const want = (placeholder != null ? [''] : []).concat(values);
  const have = [...select.options].map((o) => o.value);
  if (want.length === have.length && want.every((v, i) => v === have[i])) return;
  const keep = select.value;
  select.replaceChildren(...want.map((v) => {
    const o = el('option', null, v === '' ? placeholder : v);
    o.value = v;
    return o;
  }));
  select.value = want.includes(keep) ? keep : want[0] || '';
}

// ---- the boot storm -------------------------------------------------------------------------

// When a machine's boot began: its wake, else the first phase it entered.
function bootStart(m) {
  const e = m.entered || {};
  const starts = ['waking', 'dhcp', 'firmware', 'ipxe'].map((p) => ms(e[p])).filter(isFinite);
  const wake = m.wake ? ms(m.wake.sent_at) : NaN;
  const first = starts.length ? Math.min(...starts) : NaN;
  return isFinite(wake) && !(wake > ms(m.provisioned_at)) ? wake : first;
}

function drawStorm() {
  const all = [...S.machines.values()];
  const done = all.filter((m) => m.state === 'provisioned').length;
  const stalled = all.filter((m) => m.state === 'stalled');
  $('storm-summary').textContent = done + ' of ' + all.length + ' provisioned, ' + stalled.length + ' stalled';
  $('storm-progress').max = Math.max(all.length, 1);
  $('storm-progress').value = done;
  $('storm-progress').textContent = done + ' / ' + all.length;

  const times = [];
  for (const m of all) {
    if (!m.provisioned_at) continue;
    const t = ms(m.provisioned_at) - bootStart(m);
    if (isFinite(t) && t >= 0) times.push(t / 1000);
  }
  const hist = $('histogram');
  hist.replaceChildren();
  if (!times.length) {
    $('histogram-note').textContent = 'No machine has been provisioned yet.';
  } else {
    const max = Math.max(...times);
    const step = niceStep(max / 12);
    const bins = new Array(Math.floor(max / step) + 1).fill(0);
    for (const t of times) bins[Math.floor(t / step)]++;
    const top = Math.max(...bins);
    bins.forEach((n, i) => {
      const bar = el('div', 'bin');
      bar.title = n + ' machines in ' + duration(i * step * 1000) + '–' + duration((i + 1) * step * 1000);
      const fill = el('div', 'fill');
      fill.style.height = (100 * n / top) + '%';
      bar.append(el('span', 'n', n || ''), fill, el('span', 'x', duration(i * step * 1000)));
      hist.appendChild(bar);
    });
    times.sort((a, b) => a - b);
    const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
    $('histogram-note').textContent = times.length + ' machines; median ' + duration(q(0.5) * 1000) +
      ', p90 ' + duration(q(0.9) * 1000) + ', slowest ' + duration(max * 1000) +
      ' (from the wake, or from the first DHCP request when none was sent)';
  }

  const pools = (S.status && S.status.pools) || [];
  $('no-pools').hidden = pools.length > 0;
  $('pools').tBodies[0].replaceChildren(...pools.map((p) => {
    const tr = el('tr');
    const meter = el('meter');
    meter.max = Math.max(p.size, 1);
    meter.value = p.used;
    meter.high = p.size * 0.9;
    const m = el('td');
    m.appendChild(meter);
    tr.append(el('td', null, p.subnet), el('td', 'num', p.size), el('td', 'num', p.used),
      el('td', 'num', p.free), m);
    return tr;
  }));
  $('stalled-list').replaceChildren(...stalled.map((m) => {
    const li = el('li');
    const a = el('a', null, m.mac);
    a.href = '#/m/' + m.mac;
    li.append(a, ' ' + (m.hostname || '') + ' stalled in ' + (m.stalled_in || '?') + ' for ' +
      duration(now() - ms(m.state_since)));
    return li;
  }));
}

function niceStep(raw) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  return steps.find((s) => s >= raw) || Math.ceil(raw / 3600) * 3600;
}

// ---- a machine ------------------------------------------------------------------------------

async function openMachine(mac) {
  try {
    const rec = await api('GET', '/api/v1/machines/' + encodeURIComponent(mac));
    if (S.view !== 'machine' || location.hash !== '#/m/' + mac) return;
    S.machine = rec;
    drawMachine();
    drawPreview();
  } catch (e) {
    S.machine = null;
    $('m-title').textContent = mac;
    $('m-state').textContent = '';
    $('m-preview').textContent = '';
    $('m-preview-note').textContent = e.message;
  }
}

function drawMachine() {
  const m = S.machine;
  if (!m) return;
  $('m-title').textContent = m.mac + (m.hostname ? ' — ' + m.hostname : '');
  badge($('m-state'), m);
  $('m-adopt').hidden = !!(m.declared && m.profile);
  $('m-actions').querySelector('[data-action="wake"]').hidden = !canWake(m);
  $('m-actions').querySelector('[data-action="reinstall-now"]').hidden = !m.bmc;
  const names = (S.status && S.status.profile_names) || [];
  fillSelect($('m-adopt-profile'), names, null);
  fillSelect($('m-next-profile'), names, null);

  // The timeline: each phase entered in this boot, with how long it lasted.
  const entered = Object.entries(m.entered || {})
    .filter(([p]) => PHASES.includes(p) || p === 'stalled' || p === 'discovered')
    .map(([p, at]) => [p, ms(at)])
    .sort((a, b) => a[1] - b[1]);
  const tl = entered.map(([p, at], i) => {
    const end = i + 1 < entered.length ? entered[i + 1][1] : null;
    const tr = el('tr');
    tr.dataset.phase = p;
    const b = el('span', 'badge s-' + p, p);
    const td = el('td');
    td.appendChild(b);
    const took = end !== null ? duration(end - at)
      : p === 'provisioned' ? '' : duration(now() - at) + ' so far';
    tr.append(td, el('td', null, new Date(at).toLocaleString()), el('td', null, took));
    return tr;
  });
  $('m-timeline').tBodies[0].replaceChildren(...tl);

  const w = m.wake;
  $('m-wake').textContent = w
    ? 'Sent ' + new Date(ms(w.sent_at)).toLocaleString() + ': ' + w.outcome +
      (w.answered_after_s != null ? ', first DHCP after ' + w.answered_after_s.toFixed(1) + ' s' : '') +
      (w.provisioned_after_s != null ? ', provisioned after ' + duration(w.provisioned_after_s * 1000) : '')
    : 'Never woken from here.';

  const rows = [
    ['profile', m.profile], ['declared', m.declared ? 'yes' : 'no (seen on the network)'],
    ['IP', m.ip], ['UUID', m.uuid], ['firmware', firmware(m)], ['vendor class', m.vendor_class],
    ['next boot', nextBoot(m)], ['power (BMC)', powerText(m.power)],
    ['booting profile', m.booting_profile],
    ['last served', m.last_served], ['reported', m.reported],
    ['first seen', m.first_seen && new Date(ms(m.first_seen)).toLocaleString()],
    ['last seen', m.last_seen && new Date(ms(m.last_seen)).toLocaleString()],
  ];
  for (const [k, v] of Object.entries(m.hardware || {})) rows.push([k, k === 'memory' ? memory(v) : v]);
  for (const [k, v] of Object.entries(m.labels || {})) rows.push(['label ' + k, v]);
  $('m-facts').tBodies[0].replaceChildren(...rows.filter(([, v]) => v).map(([k, v]) => {
    const tr = el('tr');
    tr.append(el('th', null, k), el('td', null, v));
    return tr;
  }));

  $('m-history').tBodies[0].replaceChildren(...[...(m.history || [])].reverse().map((h) => {
    const tr = el('tr');
    const state = (h.from && h.from !== h.state ? h.from + ' → ' : '') + h.state +
      (h.count > 1 ? ' ×' + h.count : '');
    tr.append(el('td', null, new Date(ms(h.at)).toLocaleString()), el('td', null, h.source),
      el('td', null, h.event), el('td', null, state));
    return tr;
  }));
  for (const b of document.querySelectorAll('#view-machine [data-preview]')) {
    b.classList.toggle('active', b.dataset.preview === S.preview);
  }
  lockButtons($('view-machine'));
}

async function drawPreview() {
  const m = S.machine;
  if (!m) return;
  const what = S.preview;
  try {
    const p = await api('GET', '/api/v1/machines/' + m.mac + '/preview?what=' + what);
    if (S.preview !== what || !S.machine || S.machine.mac !== m.mac) return;
    $('m-preview-note').textContent = 'Profile ' + p.profile + ' (' + p.reason + '): ' + p.served +
      (p.uses_next_boot ? '; this uses up the one-shot next boot' : '') +
      '. Its boot secret shows as zeros.';
    $('m-preview').textContent = p.body;
  } catch (e) {
    if (S.preview !== what) return;
    $('m-preview-note').textContent = e.message;
    $('m-preview').textContent = '';
  }
}

// ---- actions --------------------------------------------------------------------------------

function lockButtons(root) {
  const locked = !token();
  for (const b of root.querySelectorAll('[data-action]')) {
    b.disabled = locked;
    b.title = locked ? 'Enter the API token to enable actions' : '';
  }
}

function say(text, error) {
  $('action-result-text').textContent = text;
  $('action-result').className = 'banner ' + (error ? 'error' : 'ok');
  $('action-result').hidden = false;
}

async function act(action, mac) {
  const base = '/api/v1/machines/' + mac;
  const calls = {
    wake: () => api('POST', base + '/wake'),
    reinstall: () => api('POST', base + '/reinstall'),
    'reinstall-now': () => api('POST', base + '/reinstall', { power_cycle: true }),
    local: () => api('PUT', base + '/next-boot', { boot: 'local' }),
    profile: () => api('PUT', base + '/next-boot', { boot: 'profile', profile: $('m-next-profile').value }),
    clear: () => api('DELETE', base + '/next-boot'),
    adopt: () => {
      const body = { profile: $('m-adopt-profile').value };
      const host = $('m-adopt-hostname').value.trim();
      if (host) body.hostname = host;
      return api('POST', base + '/adopt', body);
    },
  };
  const done = {
    wake: 'woken: ', reinstall: 'the next boot reinstalls ',
    'reinstall-now': 'booted into the install through its BMC: ',
    local: 'the next boot is from local disk for ', profile: 'the next boot is profile ' +
      $('m-next-profile').value + ' for ', clear: 'next boot cleared for ', adopt: 'adopted ',
  };
  try {
    await calls[action]();
    say(done[action] + mac, false);
    refreshMachine(mac);
    if (action === 'adopt') loadStatus();
  } catch (e) {
    say(action + ' ' + mac + ': ' + e.message + ' (HTTP ' + e.status + ')', true);
  }
}

// ---- the event stream -----------------------------------------------------------------------

function apply(t) {
  const m = S.machines.get(t.mac);
  if (!m) {
    // A machine the page has not seen: its record brings its address and facts.
    S.machines.set(t.mac, {
      mac: t.mac, state: t.to, stalled_in: t.stalled_in, state_since: t.at,
      hostname: t.hostname, profile: t.profile, labels: {}, entered: { [t.to]: t.at },
    });
    S.relist = true;
    refreshMachine(t.mac);
  } else {
    if (ms(t.at) < ms(m.state_since)) return; // older than what the snapshot showed
    m.state = t.to;
    m.stalled_in = t.stalled_in;
    m.state_since = t.at;
    if (t.hostname) m.hostname = t.hostname;
    if (t.profile) m.profile = t.profile;
    m.entered = Object.assign({}, m.entered, { [t.to]: t.at });
    if (t.to === 'provisioned') {
      m.provisioned = true;
      m.provisioned_at = t.at;
    }
    // Facts, address and next boot change with these steps: fetch them now for a row on
    // screen, else when it comes on screen.
    if (['discovered', 'dhcp', 'ipxe'].includes(t.to)) {
      if (S.visible.has(t.mac) || S.view !== 'fleet') refreshMachine(t.mac);
      else m.stale = true;
    }
  }
  S.dirty.add(t.mac);
  // The order or the filter may change with the state: re-sort, but not on every event.
  if (!S.relist && (S.sort.key === 'state' || S.sort.key === 'since' || $('state-filter').value)) {
    S.relist = 'live';
  }
  if (S.machine && S.machine.mac === t.mac) refreshMachine(t.mac);
  schedule();
}

// A machine's BMC reading changed: its page shows it at once.
function applyPower(p) {
  const m = S.machines.get(p.mac);
  if (m) m.power = p.power;
  if (S.machine && S.machine.mac === p.mac) {
    S.machine.power = p.power;
    drawMachine();
  }
}

const pending = new Map();

// Fetch one machine's record again, at most once per 300 ms per machine.
function refreshMachine(mac) {
  if (pending.has(mac)) return;
  pending.set(mac, setTimeout(async () => {
    pending.delete(mac);
    try {
      const rec = await api('GET', '/api/v1/machines/' + mac);
      const m = S.machines.get(mac);
      if (!m || ms(rec.state_since) >= ms(m.state_since)) {
        const short = Object.assign({}, rec);
        delete short.history;
        short.stale = false;
        S.machines.set(mac, Object.assign(m || {}, short));
        S.dirty.add(mac);
        S.relist = S.relist || !m;
      }
      if (S.machine && S.machine.mac === mac) {
        S.machine = rec;
        drawMachine();
        drawPreview();
      }
      schedule();
    } catch (_) {
      // gone or unreadable: the next snapshot tells
    }
  }, 300));
}

async function stream() {
  for (;;) {
    try {
      const res = await fetch('/api/v1/events', { headers: headers({ Accept: 'text/event-stream' }) });
      if (res.status === 401) {
        needToken();
        return;
      }
      if (!res.ok) throw new Error('HTTP ' + res.status);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          await event(block);
        }
      }
    } catch (_) {
      // the daemon restarted or the network went: try again
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function event(block) {
  let name = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length) return;
  const body = JSON.parse(data.join('\n'));
  if (name === 'ready') {
    // Subscribed: every change from here on arrives, so the snapshot taken now is complete.
    await loadAll();
    setLive(true);
  } else if (name === 'transition') {
    apply(body);
  } else if (name === 'power') {
    applyPower(body);
  } else if (name === 'resync') {
    // This page fell behind the stream: the daemon sent every machine.
    replaceAll(body.machines);
  }
}

function setLive(on) {
  S.live = on;
  $('live').textContent = on ? 'live' : 'reconnecting…';
  $('live').className = 'live ' + (on ? 'on' : 'off');
}

// ---- loading --------------------------------------------------------------------------------

function replaceAll(list) {
  const seen = new Set();
  for (const m of list) {
    seen.add(m.mac);
    const old = S.machines.get(m.mac);
    // A transition applied while the snapshot was on its way is newer: keep it.
    if (old && ms(old.state_since) > ms(m.state_since)) continue;
    S.machines.set(m.mac, m);
    S.dirty.add(m.mac);
  }
  for (const mac of [...S.machines.keys()]) {
    if (!seen.has(mac)) {
      S.machines.delete(mac);
      const tr = S.rows.get(mac);
      if (tr) onScreen.unobserve(tr);
      S.rows.delete(mac);
      S.visible.delete(mac);
    }
  }
  S.relist = true;
  schedule();
}

async function loadAll() {
  try {
    const [list] = await Promise.all([api('GET', '/api/v1/machines'), loadStatus()]);
    S.canRead = true;
    $('need-token').hidden = true;
    document.querySelector('main').hidden = false;
    replaceAll(list.machines);
  } catch (e) {
    if (e.status === 401) needToken();
  }
}

async function loadStatus() {
  try {
    const before = Date.now();
    const st = await api('GET', '/api/v1/status');
    if (st.now) S.skew = ms(st.now) - (before + Date.now()) / 2;
    if (!S.status || S.status.wol !== st.wol) for (const mac of S.machines.keys()) S.dirty.add(mac);
    S.status = st;
    const err = st.profiles && st.profiles.last_error;
    $('reload-error').hidden = !err;
    if (err) {
      $('reload-error-text').textContent = err.join('\n');
      $('reload-error-since').textContent = 'failed ' +
        new Date(ms(st.profiles.last_error_at)).toLocaleString() + ', serving generation ' +
        st.profiles.generation;
    }
    fillSelect($('profile-filter'), st.profile_names || [], 'every profile');
    schedule();
  } catch (e) {
    if (e.status === 401) needToken();
  }
}

function needToken() {
  S.canRead = false;
  $('need-token').hidden = false;
  document.querySelector('main').hidden = true;
  $('token').focus();
}

// ---- drawing --------------------------------------------------------------------------------

let scheduled = false;

function schedule() {
  if (scheduled) return;
  scheduled = true;
  // At most ten redraws a second, however fast transitions arrive.
  setTimeout(() => requestAnimationFrame(draw), 100);
}

function draw() {
  scheduled = false;
  for (const mac of S.dirty) {
    const m = S.machines.get(mac);
    if (m) drawRow(m);
  }
  // States change between re-sorts: who may be woken follows at once.
  if (S.dirty.size && S.shown) drawBulkWake(S.shown);
  S.dirty.clear();
  // A re-sort lays out every row: for live changes at most every 2 s.
  if (S.relist === 'live' && performance.now() - S.relisted < 2000) {
    schedule();
  } else if (S.relist) {
    S.relist = false;
    S.relisted = performance.now();
    relist();
  }
  drawCounts();
  if (S.view === 'storm') drawStorm();
}

function tick() {
  // Time in state moves on without events.
  const t = now();
  for (const mac of S.visible) {
    const tr = S.rows.get(mac);
    if (tr && tr.isConnected) since(tr, S.machines.get(mac), t);
  }
  if (S.view === 'storm') drawStorm();
}

function route() {
  const h = location.hash || '#/';
  const mac = h.startsWith('#/m/') ? decodeURIComponent(h.slice(4)) : null;
  S.view = mac ? 'machine' : h === '#/storm' ? 'storm' : 'fleet';
  $('view-fleet').hidden = S.view !== 'fleet';
  $('view-storm').hidden = S.view !== 'storm';
  $('view-machine').hidden = S.view !== 'machine';
  $('nav-fleet').classList.toggle('active', S.view === 'fleet');
  $('nav-storm').classList.toggle('active', S.view === 'storm');
  if (mac) {
    S.machine = null;
    $('m-title').textContent = mac;
    openMachine(mac);
  } else {
    S.machine = null;
  }
  schedule();
}

function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  $('token').value = '';
  $('token').placeholder = value ? 'token set' : 'API token';
  $('token-forget').hidden = !value;
  $('token-use').textContent = value ? 'Change token' : 'Unlock actions';
  lockButtons(document);
}

function init() {
  const sel = $('state-filter');
  for (const s of STATES) {
    const o = el('option', null, s);
    o.value = s;
    sel.appendChild(o);
  }
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setToken($('token').value.trim());
    if (!S.canRead) {
      loadAll();
      stream();
    }
  });
  $('token-forget').addEventListener('click', () => setToken(''));
  $('action-result-close').addEventListener('click', () => { $('action-result').hidden = true; });
  // Selects say `change` (WebDriver's choice of an option fires no `input`).
  for (const [id, kind] of [['filter', 'input'], ['state-filter', 'change'], ['profile-filter', 'change']]) {
    $(id).addEventListener(kind, () => { S.relist = true; schedule(); });
  }
  for (const th of $('fleet').tHead.rows[0].cells) {
    if (!th.dataset.sort) continue;
    th.addEventListener('click', () => {
      S.sort = { key: th.dataset.sort, dir: S.sort.key === th.dataset.sort ? -S.sort.dir : 1 };
      S.relist = true;
      schedule();
    });
  }
  $('fleet').tBodies[0].addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    if (!b) return;
    const mac = b.closest('tr').dataset.mac;
    if (b.dataset.action === 'adopt-open') location.hash = '#/m/' + mac;
    else act(b.dataset.action, mac);
  });
  $('m-actions').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    if (b && S.machine) act(b.dataset.action, S.machine.mac);
  });
  $('bulk').addEventListener('submit', (e) => {
    e.preventDefault();
    bulkAdopt();
  });
  $('bulk-wake').addEventListener('submit', (e) => {
    e.preventDefault();
    bulkWake();
  });
  $('m-adopt').addEventListener('submit', (e) => {
    e.preventDefault();
    if (S.machine) act('adopt', S.machine.mac);
  });
  for (const b of document.querySelectorAll('[data-preview]')) {
    b.addEventListener('click', () => {
      S.preview = b.dataset.preview;
      drawMachine();
      drawPreview();
    });
  }
  window.addEventListener('hashchange', route);
  setToken(token());
  route();
  stream();
  setInterval(tick, 1000);
  setInterval(loadStatus, 5000);
}

init();
