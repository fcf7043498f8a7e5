// drcut ops console: plain JavaScript, no build step, no external assets. The server enforces
// every permission; the page only hides what it would refuse.
'use strict';

const S = {
  token: sessionStorage.getItem('drcut.token') || '',
  actor: sessionStorage.getItem('drcut.actor') || '',
  me: null,
  status: null,
  playbooks: null,
  drService: null,
  planned: false,
  run: null,          // the run shown in the run view
  runStream: null,    // its AbortController
  timers: [],
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function headers() {
  const h = { 'Content-Type': 'application/json' };
  if (S.token) h['Authorization'] = 'Bearer ' + S.token;
  if (S.actor) h['X-Drcut-Actor'] = S.actor;
  return h;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || ('HTTP ' + r.status));
  return data;
}

const fmtTime = (ms) => ms ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '';
const fmtDur = (ms) => ms >= 1000 ? (ms / 1000).toFixed(1) + ' s' : ms + ' ms';
const fmtNum = (v) => (typeof v === 'number' && !Number.isInteger(v)) ? v.toFixed(2) : String(v);
const pill = (state) => el('span', { class: 'pill s-' + String(state).replace(/[^a-z_]/g, ''), 'data-state': state, text: state });
const may = (call) => !!(S.me && S.me.may && S.me.may[call]);
const readOnly = () => !!(S.status && S.status.read_only);

function showError(msg) {
  const b = $('error-bar');
  b.textContent = msg || '';
  b.hidden = !msg;
}

// ---------- login ----------

async function login(ev) {
  if (ev) ev.preventDefault();
  S.token = $('login-token').value.trim() || S.token;
  S.actor = $('login-name').value.trim() || S.actor;
  try {
    S.me = await api('GET', '/api/me');
  } catch (e) {
    $('login-error').textContent = e.message;
    S.token = '';
    return;
  }
  sessionStorage.setItem('drcut.token', S.token);
  sessionStorage.setItem('drcut.actor', S.actor);
  $('login-error').textContent = '';
  $('login').hidden = true;
  $('nav').hidden = false;
  $('logout').hidden = false;
  $('whoami').textContent = S.me.name + ' (' + (S.me.roles.join(', ') || 'no roles') + ')' + (S.me.auth_enabled ? '' : ' — open mode');
  $('whoami').dataset.user = S.me.name;
  startPolling();
  route();
}

function logout() {
  sessionStorage.removeItem('drcut.token');
  sessionStorage.removeItem('drcut.actor');
  location.hash = '';
  location.reload();
}

function startPolling() {
  S.timers.forEach(clearInterval);
  S.timers = [setInterval(refreshStatus, 1500)];
  refreshStatus();
}

// ---------- board ----------

async function refreshStatus() {
  try {
    S.status = await api('GET', '/api/status');
    showError('');
  } catch (e) {
    if (e.status === 401) return logout();
    showError('status: ' + e.message);
    return;
  }
  const st = S.status;
  const banner = $('banner');
  banner.hidden = !st.read_only;
  banner.textContent = st.read_only ? 'read-only: ' + st.read_only : '';
  const c = st.cluster;
  $('node-info').textContent = 'node ' + c.node.id + ' (' + c.node.state + ')' + (c.leader ? ', leader node ' + c.leader.id : ', no leader');
  renderServices(st);
  renderRegions(st.health);
  renderCluster(c);
  updateWriteButtons();
}

function renderServices(st) {
  const tb = $('services').tBodies[0];
  tb.replaceChildren();
  for (const s of st.services) {
    const lag = s.lag ? [
      s.lag.seconds !== undefined && s.lag.seconds !== null ? fmtNum(s.lag.seconds) + ' s' : '',
      s.lag.receive_bytes !== undefined && s.lag.receive_bytes !== null ? s.lag.receive_bytes + ' B unreceived' : '',
      s.lag.synchronous ? 'synchronous' : 'asynchronous',
    ].filter(Boolean).join(', ') : 'not measured';
    const loss = s.loss_if_failover_now;
    const btn = el('button', {
      class: 'danger dr-button', id: 'dr-' + s.service, 'data-testid': 'dr-button-' + s.service,
      'data-service': s.service, onclick: () => openDr(s.service),
    }, 'DR…');
    tb.append(el('tr', { 'data-service': s.service },
      el('td', { text: s.service }),
      el('td', {}, s.active_region || 'unknown', el('span', { class: 'muted', text: ' (' + s.active_from + ')' })),
      el('td', { text: s.standby_region || '—' }),
      el('td', { class: 'lag', text: lag }),
      el('td', { class: 'loss ' + (loss.known && loss.acknowledged_bytes === 0 ? 'ok' : 'bad'), 'data-testid': 'loss-' + s.service, title: loss.evidence || '', text: loss.text }),
      el('td', {}, s.active_run ? el('a', { href: '#run/' + s.active_run, text: s.active_run }) : '—'),
      el('td', {}, btn)));
  }
  if (!st.services.length) tb.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'no services: apply a playbook or add regions with roles' })));
}

function renderRegions(h) {
  const box = $('regions');
  box.replaceChildren();
  if (!h.live) box.append(el('p', { class: 'warn', 'data-testid': 'health-not-live', text: 'Health values are not live: no leader answered; showing replicated states only.' }));
  for (const r of h.regions) {
    const rows = r.checks.map((c) => el('tr', { class: c.stale ? 'stale' : '', 'data-check': c.check, 'data-vantage': c.vantage_agent },
      el('td', { text: c.check }),
      el('td', { text: c.type }),
      el('td', { text: c.vantage_agent + (c.vantage_region ? ' @ ' + c.vantage_region : '') }),
      el('td', {}, pill(c.state)),
      el('td', { class: 'slo' }, c.slo.map((s) => el('div', { class: s.ok ? 'ok' : 'bad', text: s.expr + ' → ' + (s.value === null ? 'no value' : fmtNum(s.value)) + (s.ok ? ' ✓' : ' ✗') }))),
      el('td', { class: 'values' }, Object.entries(c.values).map(([k, v]) => el('div', { text: k + ' = ' + fmtNum(v) }))),
      el('td', { class: 'error', text: c.error || (c.stale ? 'stale' : '') })));
    box.append(el('div', { class: 'region', 'data-region': r.region, 'data-testid': 'region-' + r.region },
      el('h3', {}, r.region + ' ', pill(r.state), el('span', { class: 'muted', text: ' ' + r.reason + (r.since_unix_ms ? ' since ' + fmtTime(r.since_unix_ms) : '') })),
      el('table', { class: 'checks' },
        el('thead', {}, el('tr', {}, ['Check', 'Type', 'Vantage', 'State', 'SLO', 'Values', ''].map((t) => el('th', { text: t })))),
        el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'no checks reported' }))))));
  }
  const agents = h.agents.map((a) => el('li', {}, a.agent_id + ' @ ' + a.region + ' ', pill(a.connected ? 'connected' : 'disconnected')));
  box.append(el('h3', { text: 'Agents' }), el('ul', { id: 'agents', 'data-testid': 'agents' }, agents));
}

function renderCluster(c) {
  const rows = c.members.map((m) => el('tr', { 'data-node': m.id },
    el('td', { text: m.id }), el('td', { text: m.addr }), el('td', { text: m.voter ? 'voter' : 'learner' }),
    el('td', {}, m.leader ? pill('leader') : ''), el('td', { text: m.lag === null ? '' : m.lag + ' entries behind' }),
    el('td', { text: m.id === c.node.id ? 'this node' : '' })));
  $('cluster').replaceChildren(
    el('p', {}, 'Cluster ' + c.cluster_id + ', term ' + c.term + ', commit index ' + c.commit_index + ', ',
      c.leader ? 'leader node ' + c.leader.id + ' at ' + c.leader.addr : el('b', { class: 'bad', text: 'no leader known' })),
    el('table', { 'data-testid': 'members' },
      el('thead', {}, el('tr', {}, ['Node', 'Address', 'Role', '', 'Replication', ''].map((t) => el('th', { text: t })))),
      el('tbody', {}, rows)));
}

// Every write button: off without the role, off while the cluster cannot take writes.
function updateWriteButtons() {
  const why = readOnly() ? 'read-only: ' + S.status.read_only : null;
  document.querySelectorAll('.dr-button').forEach((b) => {
    b.disabled = !!why || !may('StartCutover');
    b.title = why || (may('StartCutover') ? 'start a cutover or failover of this service' : 'needs the operator role');
  });
  $('dr-plan-btn').disabled = !!why || !may('PlanCutover');
  checkStartEnabled();
  renderRunButtons();
}

// ---------- DR panel ----------

async function openDr(service) {
  S.drService = service;
  S.planned = false;
  $('dr-panel').hidden = false;
  $('dr-service').textContent = service;
  $('dr-plan').hidden = true;
  $('dr-confirm-box').hidden = true;
  $('dr-blockers').replaceChildren();
  $('dr-error').textContent = '';
  $('dr-confirm').value = '';
  $('dr-reason').value = '';
  try {
    S.playbooks = await api('GET', '/api/playbooks');
  } catch (e) {
    $('dr-error').textContent = e.message;
    return;
  }
  const sel = $('dr-playbook');
  sel.replaceChildren(...S.playbooks.playbooks.filter((p) => p.service === service)
    .map((p) => el('option', { value: p.name, text: p.name + (p.description ? ' — ' + p.description : '') })));
  if (!sel.options.length) $('dr-error').textContent = 'no playbook for ' + service + ': apply one first';
  renderDrParams();
}

function selectedPlaybook() {
  return S.playbooks && S.playbooks.playbooks.find((p) => p.name === $('dr-playbook').value);
}

function renderDrParams() {
  const p = selectedPlaybook();
  const box = $('dr-params');
  box.replaceChildren();
  S.planned = false;
  $('dr-plan').hidden = true;
  $('dr-confirm-box').hidden = true;
  if (!p) return;
  for (const prm of p.parameters) {
    let input;
    if (prm.kind === 'region') {
      input = el('select', { id: 'dr-param-' + prm.name, 'data-testid': 'dr-param-' + prm.name, 'data-param': prm.name },
        S.playbooks.regions.map((r) => el('option', { value: r, text: r, selected: r === prm.default })));
    } else {
      input = el('input', { id: 'dr-param-' + prm.name, 'data-testid': 'dr-param-' + prm.name, 'data-param': prm.name, value: prm.default || '' });
    }
    input.addEventListener('change', () => { S.planned = false; $('dr-confirm-box').hidden = true; });
    box.append(el('label', { title: prm.description || '' }, prm.name + ' ', input));
  }
  $('dr-unplanned-label').hidden = !p.unplanned_capable;
  $('dr-unplanned').checked = false;
  const n = p.approvals_required;
  $('dr-approvals').textContent = n ? 'This playbook needs ' + n + ' approval' + (n > 1 ? 's' : '') + ' from someone other than you before it runs.' : 'This playbook runs without a second approval.';
}

function cutoverBody() {
  const params = {};
  document.querySelectorAll('#dr-params [data-param]').forEach((i) => { params[i.dataset.param] = i.value; });
  return { playbook: $('dr-playbook').value, params, unplanned: $('dr-unplanned').checked };
}

async function plan() {
  $('dr-error').textContent = '';
  try {
    const r = await api('POST', '/api/plan', cutoverBody());
    $('dr-plan').textContent = r.plan_text;
    $('dr-plan').hidden = false;
    $('dr-blockers').replaceChildren(...r.blockers.map((b) => el('li', { text: b })));
    S.planned = true;
    $('dr-confirm-box').hidden = false;
    $('dr-confirm').placeholder = 'type ' + S.drService;
    checkStartEnabled();
  } catch (e) {
    $('dr-error').textContent = e.message;
  }
}

function checkStartEnabled() {
  const ok = S.planned && $('dr-confirm').value.trim() === S.drService && $('dr-reason').value.trim() !== ''
    && may('StartCutover') && !readOnly();
  $('dr-start').disabled = !ok;
}

async function start() {
  $('dr-error').textContent = '';
  const body = Object.assign(cutoverBody(), {
    reason: $('dr-reason').value.trim(),
    confirm: $('dr-confirm').value.trim(),
    request_id: 'console-' + Date.now() + '-' + Math.random().toString(16).slice(2),
  });
  $('dr-start').disabled = true;
  try {
    const run = await api('POST', '/api/runs', body);
    $('dr-panel').hidden = true;
    location.hash = '#run/' + run.run_id;
  } catch (e) {
    $('dr-error').textContent = e.message;
    checkStartEnabled();
  }
}

// ---------- runs ----------

async function refreshRuns() {
  try {
    const r = await api('GET', '/api/runs');
    const tb = $('runs').tBodies[0];
    tb.replaceChildren(...r.runs.map((x) => el('tr', { 'data-run': x.run_id },
      el('td', {}, el('a', { href: '#run/' + x.run_id, text: x.run_id })), el('td', { text: x.service }),
      el('td', { text: x.playbook }), el('td', {}, pill(x.state)), el('td', { text: x.requester }),
      el('td', { text: fmtTime(x.created_unix_ms) }), el('td', { text: fmtTime(x.ended_unix_ms) }))));
    if (!r.runs.length) tb.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'no runs yet' })));
  } catch (e) {
    showError('runs: ' + e.message);
  }
}

function stepRows(run, events) {
  const plan = run.plan.steps;
  const gates = events.filter((e) => e.action === 'run.gate');
  return plan.map((s, i) => {
    const fwd = run.history.filter((a) => a.work.step === i && !a.work.compensation);
    const comp = run.history.filter((a) => a.work.step === i && a.work.compensation);
    const inflight = run.in_flight && run.in_flight.work.step === i ? run.in_flight : null;
    let state = 'pending';
    if (run.skipped && run.skipped[i] !== undefined) state = 'skipped';
    else if (inflight) state = inflight.work.compensation ? 'compensating' : 'running';
    else if (comp.some((a) => a.ok)) state = 'compensated';
    else if (run.completed.includes(i)) state = 'done';
    else if (fwd.some((a) => !a.ok) && run.cursor !== i) state = 'failed';
    else if (run.cursor === i && fwd.length) state = run.dwell_until_ms ? 'dwelling' : 'in progress';
    else if (run.cursor === i && ['running'].includes(runStateName(run))) state = run.hold ? 'held' : 'next';
    const all = fwd.concat(comp);
    const t0 = all.length ? Math.min(...all.map((a) => a.started_ms)) : (inflight ? inflight.started_ms : 0);
    const t1 = all.length ? Math.max(...all.map((a) => a.finished_ms)) : 0;
    const last = all[all.length - 1];
    let phases = '';
    if (s.phases && s.phases.length) {
      phases = s.phases.map((p, j) => p + '%' + (fwd.some((a) => a.ok && a.work.phase === j) ? ' ✓' : '')).join(' → ');
      if (s.dwell_ms) phases += ', dwell ' + fmtDur(s.dwell_ms);
      if (s.gate_region) {
        phases += ', gate: ' + s.gate_region + ' ' + (s.gate_require || 'up');
        const mine = gates.filter((g) => g.details && g.details.detail !== undefined);
        if (mine.length) phases += ' — ' + mine.map((g) => (g.details.ok ? '✓ ' : '✗ ') + g.details.detail).join('; ');
        else if (S.status) {
          const r = S.status.health.regions.find((x) => x.region === s.gate_region);
          if (r) phases += ' (now ' + r.state + ')';
        }
      }
    }
    const measurements = last && Object.keys(last.measurements || {}).length
      ? ' [' + Object.entries(last.measurements).map(([k, v]) => k + '=' + fmtNum(v)).join(', ') + ']' : '';
    return el('tr', { 'data-step': s.id, 'data-state': state, class: run.cursor === i && !['done', 'skipped'].includes(state) ? 'current' : '' },
      el('td', { text: i + 1 + (run.plan.point_of_no_return === i ? ' ⚑' : '') }),
      el('td', { text: s.id }), el('td', { text: s.act.action }), el('td', { text: s.act.region }),
      el('td', {}, pill(state)), el('td', { text: all.length || (inflight ? '1…' : '') }),
      el('td', { text: t0 && t1 ? fmtDur(t1 - t0) : (inflight ? 'running since ' + fmtTime(inflight.started_ms) : '') }),
      el('td', { text: phases }),
      el('td', { text: (run.skipped && run.skipped[i]) || ((last ? last.detail : '') + measurements) }));
  });
}

function runStateName(run) {
  return run.state && run.state.state ? run.state.state : String(run.state);
}

function renderRun(v) {
  S.run = v;
  $('run-id').textContent = v.run_id;
  const st = $('run-state');
  st.textContent = v.state;
  st.dataset.state = v.state;
  st.className = 'pill s-' + v.state;
  $('run-summary').textContent = v.playbook + ' on ' + v.service + ', requested by ' + v.requester + ' at ' + fmtTime(v.created_unix_ms)
    + ' — "' + v.reason + '"' + (v.state_reason ? ' — ' + v.state_reason : '') + (v.ended_unix_ms ? ' — ended ' + fmtTime(v.ended_unix_ms) + ' after ' + fmtDur(v.ended_unix_ms - v.created_unix_ms) : '');
  const rec = v.record && v.record.run;
  if (!rec) return;
  $('run-approvals').textContent = 'Approvals: ' + rec.approvals.length + ' of ' + rec.plan.approvals_required + ' required'
    + (rec.approvals.length ? ' (' + rec.approvals.join(', ') + ')' : '') + '; mode ' + rec.plan.mode
    + (rec.plan.failover ? ', failover ' + rec.plan.failover.source + ' → ' + rec.plan.failover.target : '');
  const lossBox = $('run-loss');
  const needsConsent = rec.loss && !rec.consent && !v.ended_unix_ms;
  lossBox.hidden = !rec.loss;
  if (rec.loss) {
    const l = rec.loss;
    const accept = l.known ? String(l.bytes) : 'unknown';
    lossBox.dataset.accept = accept;
    $('run-loss-text').textContent = 'This unplanned failover loses: ' + (l.known ? (l.synchronous ? '0 acknowledged writes (synchronous standby; ' + l.bytes + ' bytes of unacknowledged WAL)' : l.bytes + ' bytes / ' + fmtNum(l.seconds) + ' s of writes') : 'an unknown amount') + ' — ' + l.evidence
      + (rec.consent ? ' — consent: ' + rec.consent : '');
    $('run-accept-loss-label').textContent = l.known ? 'I accept losing ' + l.bytes + ' bytes' : 'I accept losing an unknown amount of data';
    $('run-accept-loss').parentElement.hidden = !needsConsent;
  }
  $('run-steps').tBodies[0].replaceChildren(...stepRows(rec, v.events || []));
  $('run-events').tBodies[0].replaceChildren(...(v.events || []).slice().reverse().map((e) => el('tr', {},
    el('td', { text: fmtTime(e.time_unix_ms) }), el('td', { text: e.actor }), el('td', { text: e.action }),
    el('td', { class: 'detail', text: eventDetail(e) }))));
  renderRunButtons();
}

function eventDetail(e) {
  const d = e.details || {};
  if (d.detail !== undefined) return (d.ok === false ? 'FAILED: ' : '') + d.detail;
  if (d.reason) return d.reason;
  if (d.who) return d.who + (d.bytes !== undefined ? ' accepts ' + d.bytes + ' bytes' : '');
  if (d.op) return d.op + (d.work ? ' step ' + (d.work.step + 1) + (d.work.phase !== null && d.work.phase !== undefined ? ' phase ' + (d.work.phase + 1) : '') + ' attempt ' + d.work.attempt : '');
  return '';
}

function renderRunButtons() {
  const v = S.run;
  if (!v || $('view-run').hidden) return;
  const rec = v.record && v.record.run;
  const ended = !!v.ended_unix_ms;
  const ro = readOnly();
  const needsConsent = rec && rec.loss && !rec.consent && !ended;
  // Waiting at an `approval` step: its attempt is in flight until someone else approves.
  const w = rec && rec.in_flight && rec.in_flight.work;
  const stepApproval = !!(w && !w.compensation && rec.plan.steps[w.step].act.action === 'approval');
  const set = (id, show, call, why) => {
    const b = $(id);
    b.hidden = !show;
    b.disabled = ro || !may(call);
    b.title = ro ? 'read-only: ' + S.status.read_only : (may(call) ? why : 'your roles do not allow this');
  };
  set('run-approve', !ended && (v.state === 'awaiting_approval' || stepApproval || needsConsent), 'ApproveRun',
    needsConsent ? 'consent to the stated loss' : 'approve (not your own run)');
  if (needsConsent && !$('run-accept-loss').checked) $('run-approve').disabled = true;
  set('run-pause', !ended && v.state !== 'paused', 'PauseRun', 'pause at the next safe point');
  set('run-resume', !ended && v.state === 'paused', 'ResumeRun', 'resume');
  set('run-abort', !ended, 'AbortRun', 'abort the run');
}

async function runAction(action) {
  const v = S.run;
  if (!v) return;
  $('run-msg').textContent = '';
  const body = { reason: $('run-action-reason').value.trim() };
  if (action === 'approve' && !$('run-loss').hidden && !$('run-accept-loss').parentElement.hidden) {
    if (!$('run-accept-loss').checked) { $('run-msg').textContent = 'tick the box to accept the stated loss first'; return; }
    body.accept_loss = $('run-loss').dataset.accept;
  }
  try {
    const r = await api('POST', '/api/runs/' + encodeURIComponent(v.run_id) + '/' + action, body);
    $('run-msg').textContent = '';
    $('run-msg').className = 'ok';
    $('run-msg').textContent = action + ': done, run is ' + r.state;
    setTimeout(() => { $('run-msg').className = 'error'; }, 0);
  } catch (e) {
    $('run-msg').className = 'error';
    $('run-msg').textContent = action + ' refused: ' + e.message;
  }
}

// The run view follows the run as the node applies it (server-sent events read with fetch:
// EventSource cannot send the Authorization header); it reconnects until the run ends.
async function followRun(id) {
  if (S.runStream) S.runStream.abort();
  const ctl = new AbortController();
  S.runStream = ctl;
  try {
    renderRun(await api('GET', '/api/runs/' + encodeURIComponent(id)));
  } catch (e) {
    $('run-msg').textContent = e.message;
    return;
  }
  while (!ctl.signal.aborted) {
    let ended = false;
    try {
      $('run-live').textContent = '● live';
      const r = await fetch('/api/runs/' + encodeURIComponent(id) + '/stream', { headers: headers(), signal: ctl.signal });
      if (!r.ok) throw new Error('stream: HTTP ' + r.status);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = 'message', data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
          }
          if (event === 'run') {
            const v = JSON.parse(data);
            renderRun(v);
            if (v.ended_unix_ms) ended = true;
          } else if (event === 'end') {
            ended = true;
          } else if (event === 'error') {
            $('run-msg').textContent = JSON.parse(data).error;
          }
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
      $('run-live').textContent = '○ reconnecting: ' + e.message;
    }
    if (ended || (S.run && S.run.ended_unix_ms)) {
      $('run-live').textContent = 'ended';
      return;
    }
    await new Promise((res) => setTimeout(res, 1500));
  }
}

// ---------- drills ----------

async function refreshDrills() {
  try {
    const [d, r] = await Promise.all([api('GET', '/api/drills'), api('GET', '/api/drill-runs')]);
    const tb = $('drills').tBodies[0];
    tb.replaceChildren(...d.drills.map((x) => el('tr', { 'data-drill': x.name },
      el('td', { text: x.name + (x.enabled ? '' : ' (disabled)') }), el('td', { text: x.service }), el('td', { text: x.target_region }),
      el('td', { text: x.rrule ? x.rrule + ' (' + x.timezone + ')' : 'on demand' }),
      el('td', {}, x.next.slice(0, 3).map((f) => el('div', { class: f.blackout ? 'muted' : '', text: f.local + (f.blackout ? ' (blackout: skipped)' : '') }))),
      el('td', { text: x.last_run ? x.last_run + ' ' + x.last_outcome : '—' }))));
    if (!d.drills.length) tb.append(el('tr', {}, el('td', { colspan: 6, class: 'muted', text: 'no drills on file' })));
    const rb = $('drill-runs').tBodies[0];
    rb.replaceChildren(...r.runs.map((x) => el('tr', { 'data-drill-run': x.id },
      el('td', { text: x.id }), el('td', { text: x.drill }), el('td', {}, pill(x.state)), el('td', {}, x.outcome ? pill(x.outcome) : ''),
      el('td', {}, el('button', { onclick: () => showReport(x.id), 'data-testid': 'drill-report-' + x.id }, 'Report')))));
    if (!r.runs.length) rb.append(el('tr', {}, el('td', { colspan: 5, class: 'muted', text: 'no drill runs yet' })));
  } catch (e) {
    showError('drills: ' + e.message);
  }
}

async function showReport(id) {
  try {
    const d = await api('GET', '/api/drill-runs/' + encodeURIComponent(id));
    $('drill-report').hidden = false;
    $('drill-report-id').textContent = id;
    $('drill-report-text').textContent = d.report_markdown || (d.state + ': no report until the drill ends');
  } catch (e) {
    showError(e.message);
  }
}

// ---------- routing ----------

let pageTimer = null;

function route() {
  if (!S.me) return;
  const h = location.hash.replace(/^#/, '') || 'board';
  document.querySelectorAll('.view').forEach((v) => { v.hidden = true; });
  document.querySelectorAll('nav a').forEach((a) => a.classList.remove('active'));
  if (pageTimer) { clearInterval(pageTimer); pageTimer = null; }
  if (!h.startsWith('run/') && S.runStream) { S.runStream.abort(); S.runStream = null; S.run = null; }
  if (h.startsWith('run/')) {
    $('view-run').hidden = false;
    $('tab-runs').classList.add('active');
    const id = decodeURIComponent(h.slice(4));
    $('run-msg').textContent = '';
    if (!S.run || S.run.run_id !== id || !S.runStream) followRun(id);
  } else if (h === 'runs') {
    $('view-runs').hidden = false;
    $('tab-runs').classList.add('active');
    refreshRuns();
    pageTimer = setInterval(refreshRuns, 3000);
  } else if (h === 'drills') {
    $('view-drills').hidden = false;
    $('tab-drills').classList.add('active');
    refreshDrills();
    pageTimer = setInterval(refreshDrills, 5000);
  } else {
    $('view-board').hidden = false;
    $('tab-board').classList.add('active');
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('dr-playbook').addEventListener('change', renderDrParams);
  $('dr-unplanned').addEventListener('change', () => { S.planned = false; $('dr-confirm-box').hidden = true; });
  $('dr-plan-btn').addEventListener('click', plan);
  $('dr-confirm').addEventListener('input', checkStartEnabled);
  $('dr-reason').addEventListener('input', checkStartEnabled);
  $('dr-start').addEventListener('click', start);
  $('dr-cancel').addEventListener('click', () => { $('dr-panel').hidden = true; });
  $('run-accept-loss').addEventListener('change', renderRunButtons);
  for (const a of ['approve', 'pause', 'resume', 'abort']) $('run-' + a).addEventListener('click', () => runAction(a));
  window.addEventListener('hashchange', route);
  if (S.token || S.actor) {
    $('login-token').value = '';
    login();
  }
});
