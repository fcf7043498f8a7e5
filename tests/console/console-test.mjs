// Drives the drcut ops console in a real headless Chromium (Debian's, never a downloaded one).
// Run by tests/tests/t150_console.rs, which starts the environment and passes:
//   CONSOLE_URL      the console of a follower node, e.g. http://127.0.150.2:9100/
//   TOKEN_VERA/OLGA/ARNE  viewer; operator+approver; approver
//   SCREENSHOT_DIR   where the PNGs go
//   PHASE            "main" (board, DR button, approval, run to success, drills) or
//                    "degraded" (the survivor of a lost quorum shows read-only)
//   CHROMIUM         the browser binary (default /usr/bin/chromium)
// Prints `RUN_ID=<id>` for the Rust side; exits non-zero with the reason on any failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`missing environment variable ${k}`);
  return v;
};
const URL_ = env('CONSOLE_URL');
const SHOTS = env('SCREENSHOT_DIR');
const PHASE = env('PHASE', 'main');
const SERVICE = env('SERVICE', 'wallet');
const PLAYBOOK = env('PLAYBOOK', 'wallet-test-cutover');
mkdirSync(SHOTS, { recursive: true });

const log = (...a) => console.log(new Date().toISOString(), ...a);
function check(cond, msg) {
  if (!cond) throw new Error('check failed: ' + msg);
}

// No background traffic (this network reaches no Google host); Playwright gives every launch
// a fresh temporary profile of its own.
const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage'],
});

// Every page: console errors and requests to anything but the console fail the test.
async function session(name, token) {
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await ctx.newPage();
  const origin = new URL(URL_).origin;
  page.on('request', (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) {
      log(`${name}: EXTERNAL REQUEST ${r.url()}`);
      process.exitCode = 3;
    }
  });
  page.on('pageerror', (e) => { log(`${name}: page error: ${e.message}`); process.exitCode = 4; });
  page.on('console', (m) => { if (m.type() === 'error') log(`${name}: console: ${m.text()}`); });
  await page.goto(URL_);
  await page.fill('#login-token', token);
  await page.click('#login-submit');
  await page.waitForFunction((n) => document.querySelector('#whoami')?.dataset.user === n, name);
  log(`${name} signed in`);
  return { ctx, page };
}

const shot = async (page, file) => {
  await page.screenshot({ path: join(SHOTS, file), fullPage: true });
  log(`screenshot ${file}`);
};

// A call from inside the page with `token`: what a hand-crafted request gets (the server
// enforces; the disabled button is only a courtesy).
const rawCall = (page, method, path, token, body) => page.evaluate(async ([m, p, t, b]) => {
  const r = await fetch(p, { method: m, headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + t }, body: b ? JSON.stringify(b) : undefined });
  return { status: r.status, body: await r.text() };
}, [method, path, token, body]);

async function main() {
  const vera = await session('vera', env('TOKEN_VERA'));
  if (PHASE === 'degraded') {
    await vera.page.waitForSelector('#banner:not([hidden])', { timeout: 30_000 });
    const text = await vera.page.textContent('#banner');
    check(text.includes('read-only'), `banner says read-only: ${text}`);
    log(`banner: ${text}`);
    await shot(vera.page, 'degraded.png');
    const olga = await session('olga', env('TOKEN_OLGA'));
    await olga.page.waitForSelector('#banner:not([hidden])', { timeout: 30_000 });
    await olga.page.waitForSelector(`#dr-${SERVICE}`);
    check(await olga.page.isDisabled(`#dr-${SERVICE}`), 'DR button disabled while read-only, even for an operator');
    return;
  }

  log('--- the board shows real health');
  const p = vera.page;
  await p.waitForSelector('[data-testid=region-eu-west] h3 .pill[data-state=up]', { timeout: 30_000 });
  await p.waitForSelector('[data-testid=region-eu-central] h3 .pill[data-state=up]');
  // Live values per check and vantage: the app's latency SLO and the standby's replication.
  await p.waitForSelector('[data-testid=region-eu-west] td.slo div:has-text("p95_ms")');
  await p.waitForSelector('[data-testid=region-eu-central] td.values div:has-text("lag_seconds")');
  await p.waitForSelector(`#services tr[data-service=${SERVICE}]`);
  const loss = await p.textContent(`[data-testid=loss-${SERVICE}]`);
  log(`loss if failed over now: ${loss}`);
  check(/bytes|acknowledged/.test(loss), `expected-loss cell names bytes: ${loss}`);
  const members = await p.locator('[data-testid=members] tbody tr').count();
  check(members === 3, `3 coordinator members listed, got ${members}`);
  await shot(p, 'board.png');

  log('--- a viewer cannot press the DR button, nor call the API behind it');
  check(await p.isDisabled(`#dr-${SERVICE}`), 'DR button disabled for a viewer');
  const refused = await rawCall(p, 'POST', '/api/runs', env('TOKEN_VERA'),
    { playbook: PLAYBOOK, reason: 'x', confirm: SERVICE });
  check(refused.status === 403, `viewer start refused with 403: ${JSON.stringify(refused)}`);

  log('--- olga plans and starts a cutover');
  const olga = await session('olga', env('TOKEN_OLGA'));
  const o = olga.page;
  await o.waitForSelector(`#dr-${SERVICE}:not([disabled])`, { timeout: 15_000 });
  await o.click(`#dr-${SERVICE}`);
  await o.waitForSelector(`#dr-playbook option[value="${PLAYBOOK}"]`, { state: 'attached' });
  await o.selectOption('#dr-playbook', PLAYBOOK);
  check((await o.inputValue('#dr-param-target')) === 'eu-central', 'target defaults to eu-central');
  check((await o.textContent('#dr-approvals')).includes('1 approval'), 'the panel says an approval is needed');
  await o.click('#dr-plan-btn');
  await o.waitForSelector('#dr-plan:not([hidden])');
  const planText = await o.textContent('#dr-plan');
  check(planText.includes('promote'), `plan names the promotion: ${planText}`);
  check(await o.isDisabled('#dr-start'), 'start disabled before confirmation');
  await o.fill('#dr-confirm', SERVICE.slice(0, -1));
  await o.fill('#dr-reason', 'console test: planned move to eu-central');
  check(await o.isDisabled('#dr-start'), 'start disabled while the typed name is wrong');
  await o.fill('#dr-confirm', SERVICE);
  check(await o.isEnabled('#dr-start'), 'start enabled with name and reason');
  await shot(o, 'plan.png');
  await o.click('#dr-start');
  await o.waitForFunction(() => location.hash.startsWith('#run/'));
  const runId = decodeURIComponent((await o.evaluate(() => location.hash)).slice(5));
  console.log(`RUN_ID=${runId}`);
  await o.waitForSelector('#run-state[data-state=awaiting_approval]', { timeout: 15_000 });
  await o.waitForSelector('#run-steps tbody tr[data-step=promote]');
  await shot(o, 'run-awaiting-approval.png');

  log('--- olga cannot approve her own run');
  await o.click('#run-approve');
  await o.waitForFunction(() => document.querySelector('#run-msg').textContent.includes('refused'));
  const own = await o.textContent('#run-msg');
  check(own.includes('two-person'), `own approval refused with the two-person rule: ${own}`);
  check((await o.getAttribute('#run-state', 'data-state')) === 'awaiting_approval', 'still awaiting approval');
  const viewerApprove = await rawCall(p, 'POST', `/api/runs/${encodeURIComponent(runId)}/approve`, env('TOKEN_VERA'), {});
  check(viewerApprove.status === 403, `viewer approve refused with 403: ${JSON.stringify(viewerApprove)}`);
  const viewerPause = await rawCall(p, 'POST', `/api/runs/${encodeURIComponent(runId)}/pause`, env('TOKEN_VERA'), {});
  check(viewerPause.status === 403, `viewer pause refused with 403: ${JSON.stringify(viewerPause)}`);

  log('--- olga pauses the waiting run and resumes it');
  await o.click('#run-pause');
  await o.waitForSelector('#run-state[data-state=paused]', { timeout: 15_000 });
  await o.waitForSelector('#run-resume:not([disabled])');
  await o.click('#run-resume');
  await o.waitForSelector('#run-state[data-state=awaiting_approval]', { timeout: 15_000 });

  log('--- arne approves from his own session; the run proceeds to success');
  const arne = await session('arne', env('TOKEN_ARNE'));
  const a = arne.page;
  await a.goto(`${URL_}#run/${encodeURIComponent(runId)}`);
  await a.waitForSelector('#run-state[data-state=awaiting_approval]');
  await a.waitForSelector('#run-approve:not([disabled])');
  check(await a.isDisabled('#run-abort'), 'an approver without the operator role cannot abort');
  await a.click('#run-approve');
  await a.waitForFunction(() => document.querySelector('#run-msg').textContent.includes('approve: done'));
  // Olga's page follows the stream: steps complete one by one.
  await o.waitForSelector('#run-steps tr[data-step=freeze][data-state=done]', { timeout: 60_000 });
  log('freeze done (seen live)');
  await o.waitForSelector('#run-state[data-state=succeeded]', { timeout: 150_000 });
  const done = await o.locator('#run-steps tbody tr[data-state=done]').count();
  const total = await o.locator('#run-steps tbody tr').count();
  check(done === total && total >= 9, `every step done: ${done} of ${total}`);
  const events = await o.textContent('#run-events');
  check(events.includes('run.approve') && events.includes('arne'), 'the approval by arne is in the events');
  check(events.includes('run.gate'), 'the gate verdict is in the events');
  await shot(o, 'run-finished.png');
  await a.waitForSelector('#run-state[data-state=succeeded]', { timeout: 10_000 });

  log('--- runs list and drills');
  await o.click('#tab-runs');
  await o.waitForSelector(`#runs tr[data-run="${runId}"]`);
  await shot(o, 'runs.png');
  await o.click('#tab-drills');
  await o.waitForSelector('#drills tbody tr');
  await o.waitForSelector('#drill-runs tbody tr[data-drill-run] button');
  await o.click('#drill-runs tbody tr[data-drill-run] button');
  await o.waitForSelector('#drill-report:not([hidden])');
  await o.waitForFunction(() => document.querySelector('#drill-report-text').textContent.length > 100);
  await shot(o, 'drills.png');
  await o.click('#tab-board');
  await o.waitForSelector(`#services tr[data-service=${SERVICE}]`);
  await o.waitForFunction((s) => document.querySelector(`#services tr[data-service=${s}] td:nth-child(2)`)?.textContent.startsWith('eu-central'), SERVICE, { timeout: 15_000 });
  await shot(o, 'board-after.png');
}

try {
  await main();
  log(`phase ${PHASE} passed`);
} catch (e) {
  log(`FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close().catch(() => {});
}
