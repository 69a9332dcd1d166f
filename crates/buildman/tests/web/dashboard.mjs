// The dashboard as a person uses it, in headless Chromium (Debian's, driven by
// playwright-core): log in with the token; a build submitted through the API appears in
// the list without a reload; open it; watch its log lines arrive; cancel it and see
// `cancelled`; a failed build shows why. Also: keyboard use, contrast and a 400 px wide
// screen; page weight and the time from a log line sent to it shown (median of 20).
//
// Run by crates/buildman/tests/dashboard.rs, which starts the manager. Environment: BASE
// (the API's URL), TOKEN, GO_DIR (a file named after a build lets its worker send its
// lines), OUT (screenshots and results.json).
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

const { BASE, TOKEN, GO_DIR, OUT } = process.env;
const LINES = 20;
const T = 60_000;
fs.mkdirSync(OUT, { recursive: true });

async function api(method, route, body) {
  const headers = { Authorization: `Bearer ${TOKEN}` };
  if (body !== undefined && !(body instanceof Uint8Array)) headers['Content-Type'] = 'application/json';
  const answer = await fetch(BASE + route, {
    method,
    headers,
    body: body instanceof Uint8Array ? body : body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(answer.ok, `${method} ${route}: ${answer.status} ${await answer.clone().text()}`);
  return answer.status === 204 ? null : answer.json();
}

// Submits a build of a lone Dockerfile to ns/name (the test worker plays the scenario the
// repository is named after).
async function submit(repository) {
  const drop = await api('POST', '/api/v1/filedrop/', { mimeType: 'application/octet-stream' });
  await api('PUT', `/api/v1/filedrop/${drop.file_id}`, new TextEncoder().encode('FROM scratch\n'));
  const view = await api('POST', `/api/v1/repository/${repository}/build/`, { file_id: drop.file_id });
  return view.id;
}

const go = (id) => fs.writeFileSync(path.join(GO_DIR, id), '');
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// Bytes a page load transferred (headers and bodies as they came over the wire), from the
// DevTools protocol; streams still open count what they received so far.
async function meter(context, page) {
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const received = new Map();
  const finished = new Map();
  const urls = new Map();
  cdp.on('Network.requestWillBeSent', (e) => urls.set(e.requestId, e.request.url));
  cdp.on('Network.dataReceived', (e) => received.set(e.requestId, (received.get(e.requestId) || 0) + e.encodedDataLength));
  cdp.on('Network.loadingFinished', (e) => finished.set(e.requestId, e.encodedDataLength));
  return () => {
    const rows = [];
    for (const [id, url] of urls) {
      const bytes = finished.has(id) ? finished.get(id) : received.get(id) || 0;
      rows.push({ url: url.replace(BASE, ''), bytes, finished: finished.has(id) });
    }
    return { total: rows.reduce((n, r) => n + r.bytes, 0), requests: rows };
  };
}

// WCAG contrast ratio of an element's text against its (first opaque) background.
async function contrast(page, selector) {
  return page.$eval(selector, (el) => {
    const rgb = (c) => c.match(/[\d.]+/g).slice(0, 4).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    let bg = el;
    while (bg && (getComputedStyle(bg).backgroundColor === 'rgba(0, 0, 0, 0)' || rgb(getComputedStyle(bg).backgroundColor)[3] === 0)) bg = bg.parentElement;
    const back = bg ? rgb(getComputedStyle(bg).backgroundColor) : [255, 255, 255];
    const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(back)].sort((x, y) => y - x);
    return (a + 0.05) / (b + 0.05);
  });
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const results = { latency_ms: [], contrast: {} };
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  const urls = [];
  page.on('request', (r) => urls.push(r.url()));
  page.on('pageerror', (e) => { throw e; });

  // Log in: the list sends a visitor without a token to the login page.
  await page.goto(BASE + '/');
  await page.waitForURL(/\/login\?next=/);
  await page.getByLabel('API token').fill('not the token');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByText('That token was refused.').waitFor();
  await page.getByLabel('API token').fill(TOKEN);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.waitForURL(BASE + '/');
  await page.locator('#list-status', { hasText: 'updated live' }).waitFor();

  // A build submitted through the API appears without a reload.
  let navigations = 0;
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations += 1; });
  const held = await submit('web/hold-building');
  const row = page.locator(`tr[data-id="${held}"]`);
  await row.waitFor();
  assert.equal(navigations, 0, 'the list updated in place');
  await row.locator('[data-phase="building"]').waitFor();

  // Open it; its lines arrive live (the worker sends them once the page follows the log).
  await row.getByRole('link').click();
  await page.waitForURL(`${BASE}/builds/${held}`);
  await page.locator('#log-status', { hasText: 'Following live' }).waitFor();
  await page.locator('#log .line.step', { hasText: 'Step 1/2 : FROM scratch' }).waitFor();
  await page.evaluate(() => {
    window.shown = [];
    new MutationObserver((changes) => {
      const now = Date.now();
      for (const change of changes) {
        for (const node of change.addedNodes) {
          const m = /^line (\d+) sent-at (\d+)/.exec(node.textContent.replace(/^\d+/, ''));
          if (m) window.shown.push({ n: Number(m[1]), latency: now - Number(m[2]) });
        }
      }
    }).observe(document.getElementById('log'), { childList: true });
  });
  go(held);
  await page.locator('#log .line', { hasText: `line ${LINES} sent-at` }).waitFor();
  const shown = await page.evaluate(() => window.shown);
  assert.deepEqual(shown.map((s) => s.n), Array.from({ length: LINES }, (_, i) => i + 1), 'each line once, in order');
  results.latency_ms = shown.map((s) => s.latency);
  results.latency_median_ms = median(results.latency_ms);

  // Steps stand apart; each line has a link; the view follows the newest line.
  const timeline = await page.locator('#timeline li').allTextContents();
  assert.ok(timeline.some((t) => t.startsWith('building')), `timeline: ${timeline}`);
  const link = page.locator('#log .line.step .ln').first();
  assert.match(await link.getAttribute('href'), /^#L\d+$/);
  const atBottom = () => page.$eval('#log', (l) => l.scrollTop + l.clientHeight >= l.scrollHeight - 4);
  assert.ok(await atBottom(), 'auto-scroll follows the log');
  results.contrast.step_line = await contrast(page, '#log .line.step .msg');
  results.contrast.log_line = await contrast(page, '#log .line:not(.step):not(.err):not(.phase-entry) .msg');
  results.contrast.phase_badge = await contrast(page, '#summary .phase');
  await page.screenshot({ path: path.join(OUT, 'build.png'), fullPage: true });

  // Scrolled up, the view stays put as lines arrive, and offers the way back.
  await page.$eval('#log', (l) => { l.scrollTop = 0; l.dispatchEvent(new Event('scroll')); });
  await page.locator('#jump').waitFor();

  // Cancel it while it runs.
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Cancel build' }).click();
  await page.locator('#summary [data-phase="cancelled"]').waitFor();
  await page.locator('#log .line.phase-entry', { hasText: 'cancelled' }).waitFor();
  await page.locator('#log-status', { hasText: 'over' }).waitFor();
  assert.equal(await page.$eval('#log', (l) => l.scrollTop), 0, 'auto-scroll stopped when scrolled up');
  assert.equal(await page.getByRole('button', { name: 'Cancel build' }).count(), 0, 'no cancel once over');

  // A failed build shows why, and its error line stands out.
  const failed = await submit('web/fail-building');
  go(failed);
  await page.goto(BASE + '/');
  const failedRow = page.locator(`tr[data-id="${failed}"]`);
  await failedRow.locator('[data-phase="error"]').waitFor();
  await page.screenshot({ path: path.join(OUT, 'list.png'), fullPage: true });
  // The README's picture (docs/dashboard.png): the top of the list.
  await page.screenshot({ path: path.join(OUT, 'list-top.png'), clip: { x: 0, y: 0, width: 1280, height: 380 } });
  await failedRow.getByRole('link').click();
  // The summary is the build's `error`, as the API has it.
  const failedView = await api('GET', `/api/v1/build/${failed}`);
  assert.ok(failedView.error, 'the failed build has an error text');
  await page.locator('.error-summary p', { hasText: failedView.error.trim() }).waitFor();
  await page.locator('#log .line.err', { hasText: "returned a non-zero code: 2" }).waitFor();
  results.contrast.error_line = await contrast(page, '#log .line.err .msg');
  results.contrast.error_summary = await contrast(page, '.error-summary p');
  await page.screenshot({ path: path.join(OUT, 'build-failed.png'), fullPage: true });

  // 400 px wide, by keyboard alone: the list fits, and a build opens with Tab and Enter.
  await page.setViewportSize({ width: 400, height: 800 });
  await page.goto(`${BASE}/?phase=error`);
  await failedRow.waitFor();
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 400), 'no sideways scrolling at 400 px');
  await page.screenshot({ path: path.join(OUT, 'list-400px.png'), fullPage: true });
  let focused = '';
  for (let i = 0; i < 30 && !focused.startsWith('/builds/'); i++) {
    await page.keyboard.press('Tab');
    focused = await page.evaluate(() => document.activeElement.getAttribute('href') || '');
  }
  assert.equal(focused, `/builds/${failed}`, 'the build link is reachable by Tab');
  await page.keyboard.press('Enter');
  await page.waitForURL(`${BASE}/builds/${failed}`);
  await page.locator('.error-summary').waitFor();
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 400), 'the build page fits 400 px');
  await page.screenshot({ path: path.join(OUT, 'build-400px.png'), fullPage: true });

  for (const [what, ratio] of Object.entries(results.contrast)) {
    assert.ok(ratio >= 4.5, `${what}: contrast ${ratio.toFixed(2)} is below 4.5:1`);
  }
  assert.ok(!urls.some((u) => u.includes(TOKEN)), 'the token never goes into a URL');

  // The list and a build page, each opened afresh (logged in, nothing cached): what they
  // transfer until they show their data.
  const weigh = async (route, ready) => {
    const fresh = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await fresh.addInitScript((token) => sessionStorage.setItem('buildman-token', token), TOKEN);
    const freshPage = await fresh.newPage();
    const weight = await meter(fresh, freshPage);
    await freshPage.goto(BASE + route);
    await ready(freshPage).waitFor();
    const result = weight();
    await fresh.close();
    return result;
  };
  results.list_page = await weigh('/', (p) => p.locator('#list-status', { hasText: 'updated live' }));
  results.build_page = await weigh(`/builds/${failed}`, (p) => p.locator('#log-status', { hasText: 'over' }));
} finally {
  await browser.close();
}
fs.writeFileSync(path.join(OUT, 'results.json'), JSON.stringify(results, null, 2));
console.log(JSON.stringify({
  list_page_bytes: results.list_page.total,
  build_page_bytes: results.build_page.total,
  latency_median_ms: results.latency_median_ms,
  latency_ms: results.latency_ms,
  contrast: results.contrast,
}));
