// Drive the demo page (/demo) in a real chromium with playwright-core; run by tests/test_demo_browser.py.
//
//   node tests/browser/demo.mjs --base http://127.0.0.1:PORT --out DIR --chromium /usr/bin/chromium
//
// The gateway must run with DEV_LOGIN=1 and a (slow) ComfyUI behind it. The script logs in,
// submits txt2img, watches the queue/progress, the live preview and its reveal, the final image,
// then submits a second job and cancels it. Screenshots go to DIR. Its last stdout line is a JSON
// report {"ok", "checks": {name: {"ok", "detail"}}, "screenshots", "polls"}; exit 0 only if every
// check passed. Status polls of the first job pass through a route that injects one 503 and one
// 429 (each with Retry-After) to see the page back off.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

function args() {
  const out = { base: process.env.DEMO_BASE_URL, out: process.env.ARTIFACTS_DIR, chromium: '/usr/bin/chromium' };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  if (!out.base || !out.out) {
    console.error('usage: node tests/browser/demo.mjs --base URL --out DIR [--chromium PATH]');
    process.exit(2);
  }
  return out;
}

const opts = args();
mkdirSync(opts.out, { recursive: true });
const checks = {};
const screenshots = [];
const check = (name, ok, detail = null) => { checks[name] = { ok: Boolean(ok), detail }; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const STATUS_PATH = /^\/v1\/jobs\/([0-9a-f-]{36})$/;
const SLACK_MS = 25; // timer and event-loop jitter

// ---- what the page's status polls did (seen at the network, in this process's clock)
const polls = []; // {job, t, inm, status, etag, pollAfter, done, injected}
const injectFor = { 2: { status: 304 }, // "unchanged": the page keeps what it shows and polls on
                    4: { status: 503, code: 'backend_unavailable', retryAfter: 2 },
                    6: { status: 429, code: 'rate_limited', retryAfter: 1 } };
let firstJobId = null;

async function shoot(page, name, fullPage = true) {
  const file = path.join(opts.out, name);
  await page.screenshot({ path: file, fullPage });
  screenshots.push(file);
  return file;
}

async function run(page) {
  const staticTypes = {};
  page.on('response', (resp) => {
    const u = new URL(resp.url());
    if (u.pathname.startsWith('/demo')) {
      staticTypes[u.pathname] = { type: resp.headers()['content-type'], cache: resp.headers()['cache-control'],
                                  status: resp.status() };
    }
  });
  await page.route((url) => STATUS_PATH.test(url.pathname), async (route) => {
    const req = route.request();
    if (req.method() !== 'GET') return route.continue();
    const job = STATUS_PATH.exec(new URL(req.url()).pathname)[1];
    const entry = { job, t: Date.now(), inm: req.headers()['if-none-match'] || null };
    polls.push(entry);
    const n = polls.filter((p) => p.job === job).length;
    const fault = job === firstJobId ? injectFor[n] : undefined;
    if (fault) {
      Object.assign(entry, { status: fault.status, injected: fault, done: Date.now() });
      if (fault.status === 304) return route.fulfill({ status: 304, headers: { ETag: entry.inm || '' }, body: '' });
      return route.fulfill({ status: fault.status, contentType: 'application/json',
                             headers: { 'Retry-After': String(fault.retryAfter) },
                             body: JSON.stringify({ error: { code: fault.code, message: 'injected by the test' } }) });
    }
    const resp = await route.fetch();
    entry.status = resp.status();
    entry.etag = resp.headers()['etag'] || null;
    if (entry.status === 200) entry.pollAfter = (await resp.json()).job.poll_after_ms;
    entry.done = Date.now();
    return route.fulfill({ response: resp });
  });

  // ---- the page and the login
  const answer = await page.goto(`${opts.base}/demo`);
  check('page_served', answer.status() === 200 && answer.headers()['content-type'].startsWith('text/html')
        && answer.headers()['cache-control'] === 'no-cache', { status: answer.status(), headers: answer.headers() });
  await page.waitForSelector('#login-panel:not([hidden])');
  await shoot(page, '01-login.png', false);
  await page.fill('#login-user', 'alice');
  await page.click('#login-button');
  await page.waitForSelector('#app:not([hidden])', { timeout: 10000 });
  await page.waitForSelector('#fields [data-param="prompt"]', { timeout: 10000 });
  check('login', await page.isVisible('#who'), await page.textContent('#who-name'));
  const scripts = ['/demo/api.js', '/demo/job.js', '/demo/form.js', '/demo/demo.js'];
  check('static_types', scripts.every((s) => staticTypes[s]?.type?.startsWith('text/javascript')
                                             && staticTypes[s]?.cache === 'no-cache')
        && staticTypes['/demo/demo.css']?.type?.startsWith('text/css'), staticTypes);

  // ---- the form comes from the workflow's params
  await page.selectOption('#workflow', 'txt2img');
  await page.waitForSelector('#fields [data-param="width"]');
  const form = await page.evaluate(() => {
    const q = (name) => document.querySelector(`#fields [data-param="${name}"]`);
    const attrs = (node) => node && { tag: node.tagName.toLowerCase(), type: node.type, value: node.value,
                                      min: node.min, max: node.max, step: node.step, required: node.required,
                                      maxlength: node.maxLength, placeholder: node.placeholder,
                                      options: node.options ? [...node.options].map((o) => o.value) : null };
    return { workflows: [...document.querySelectorAll('#workflow option')].map((o) => o.value),
             prompt: attrs(q('prompt')), width: attrs(q('width')), seed: attrs(q('seed')), cfg: attrs(q('cfg')),
             sampler: attrs(q('sampler_name')), checkpoint: attrs(q('checkpoint')) };
  });
  check('form_from_params',
        form.workflows.includes('txt2img') && form.prompt?.tag === 'textarea' && form.prompt?.required
        && form.prompt?.maxlength === 2000
        && form.width?.type === 'number' && form.width?.value === '512' && form.width?.min === '64'
        && form.width?.max === '2048' && form.width?.step === '8'
        && form.seed?.value === '' && form.seed?.placeholder === 'random'
        && form.cfg?.step === 'any' && form.cfg?.value === '7'
        && form.sampler?.tag === 'select' && form.sampler?.options?.includes('euler') && form.sampler?.value === 'euler'
        && form.checkpoint?.tag === 'select' && form.checkpoint?.value === 'v1-5-pruned-emaonly.safetensors', form);

  // ---- the form checks the params' rules before sending anything
  let jobPosts = 0;
  page.on('request', (r) => { if (new URL(r.url()).pathname === '/v1/jobs' && r.method() === 'POST') jobPosts += 1; });
  await page.fill('[data-param="width"]', '100');
  await page.click('#submit');
  await page.waitForSelector('[data-field="width"].invalid');
  const widthError = await page.textContent('[data-field="width"] .field-error');
  const promptError = await page.textContent('[data-field="prompt"] .field-error');
  check('form_checks_rules', widthError === 'must be a multiple of 8' && promptError === 'required' && jobPosts === 0,
        { widthError, promptError, jobPosts });

  // ---- first job: submit, then watch it run
  await page.fill('[data-param="prompt"]', 'a lighthouse at dusk, oil painting');
  await page.fill('[data-param="width"]', '256');
  await page.fill('[data-param="height"]', '256');
  await page.fill('[data-param="seed"]', '1417'); // a smooth gradient from the fake ComfyUI
  const submitted = page.waitForResponse((r) => new URL(r.url()).pathname === '/v1/jobs'
                                         && r.request().method() === 'POST');
  await page.click('#submit');
  const submitResp = await submitted;
  const submitReq = submitResp.request();
  const first = (await submitResp.json()).job;
  firstJobId = first.id;
  check('submit', submitResp.status() === 202 && Boolean(submitReq.headers()['idempotency-key']),
        { status: submitResp.status(), idempotency_key: submitReq.headers()['idempotency-key'] || null });

  const samples = [];
  let midShot = null;
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline) {
    const s = await page.evaluate(() => {
      const preview = document.getElementById('preview');
      return {
        status: document.getElementById('job-panel').dataset.status,
        percent: Number(document.getElementById('progress-bar').dataset.percent),
        label: document.getElementById('progress-label').textContent,
        queue: document.getElementById('job-queue').textContent,
        preview: !preview.hidden && preview.complete && preview.naturalWidth > 0,
        blur: preview.dataset.blur === '' ? null : Number(preview.dataset.blur),
      };
    });
    samples.push(s);
    if (!midShot && s.status === 'running' && s.preview && s.percent >= 30) {
      midShot = await shoot(page, '02-running.png');
    }
    if (['succeeded', 'failed', 'cancelled'].includes(s.status)) break;
    await sleep(100);
  }
  const last = samples[samples.length - 1];
  check('first_job_succeeded', last.status === 'succeeded', last);
  const running = samples.filter((s) => s.status === 'running');
  const percents = [...new Set(running.map((s) => s.percent))];
  const queued = samples.filter((s) => s.status === 'queued' && /Queued/.test(s.queue));
  check('queue_or_progress_moved',
        percents.filter((p) => p > 0 && p < 100).length >= 3 || queued.length > 0,
        { percents, queued: queued.map((s) => s.queue) });
  check('progress_monotonic', running.every((s, i) => i === 0 || s.percent >= running[i - 1].percent), percents);
  check('node_title_shown', running.some((s) => s.label.includes('KSampler') && /step \d+\/\d+/.test(s.label)),
        [...new Set(running.map((s) => s.label))].slice(0, 5));
  check('eta_or_running_shown', running.some((s) => s.queue.startsWith('Running')), running.map((s) => s.queue)[0]);
  const withPreview = running.filter((s) => s.preview && s.blur !== null);
  check('preview_seen', withPreview.length > 0, { samples_with_preview: withPreview.length });
  const blurs = withPreview.map((s) => s.blur);
  check('preview_sharpens', blurs.length >= 2 && blurs[blurs.length - 1] < blurs[0]
        && blurs.every((b, i) => i === 0 || b <= blurs[i - 1]), { first: blurs[0], last: blurs[blurs.length - 1] });

  // ---- the result fades in over the preview
  await page.waitForFunction(() => {
    const img = document.getElementById('result');
    return !img.hidden && img.complete && img.naturalWidth > 0 && getComputedStyle(img).opacity === '1';
  }, null, { timeout: 15000 });
  const result = await page.evaluate(() => {
    const img = document.getElementById('result');
    const preview = document.getElementById('preview');
    return { naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight, src: img.src,
             previewOpacity: getComputedStyle(preview).opacity, previewBlur: preview.dataset.blur };
  });
  check('final_image_loaded', result.naturalWidth === 256 && result.naturalHeight === 256
        && result.src.includes('/v1/files/') && Number(result.previewOpacity) < 0.01, result);
  await sleep(300);
  await shoot(page, '03-succeeded.png');

  // ---- how the page polled
  const mine = polls.filter((p) => p.job === firstJobId).sort((a, b) => a.t - b.t);
  let etag = null;
  const inmProblems = [];
  const waitProblems = [];
  let lastAfter = null;
  for (let i = 0; i < mine.length; i++) {
    const p = mine[i];
    if (etag && p.inm !== etag) inmProblems.push({ i, sent: p.inm, expected: etag });
    if (p.status === 200 && p.etag) etag = p.etag;
    if (p.status === 200) lastAfter = p.pollAfter;
    const next = mine[i + 1];
    if (!next) continue;
    const gap = next.t - p.done;
    const wanted = p.injected?.retryAfter ? p.injected.retryAfter * 1000 : lastAfter; // a 304: as the last 200 said
    if (wanted != null && gap < wanted - SLACK_MS) waitProblems.push({ i, status: p.status, gap, wanted });
  }
  check('polls_send_if_none_match', mine.length >= 3 && mine.slice(1).some((p) => p.inm) && !inmProblems.length,
        { polls: mine.length, not_modified: mine.filter((p) => p.status === 304).length, problems: inmProblems });
  check('polls_honour_poll_after_ms', !waitProblems.filter((w) => !w.status || w.status < 400).length,
        waitProblems.filter((w) => !w.status || w.status < 400));
  const injected = mine.filter((p) => p.injected);
  check('polls_back_off_by_retry_after',
        injected.map((p) => p.status).join() === '304,503,429' && !waitProblems.filter((w) => w.status >= 400).length,
        { injected: injected.map((p) => p.status), problems: waitProblems.filter((w) => w.status >= 400) });

  // ---- second job: submit and cancel it
  await page.fill('[data-param="prompt"]', 'a second picture, to be cancelled');
  const again = page.waitForResponse((r) => new URL(r.url()).pathname === '/v1/jobs'
                                     && r.request().method() === 'POST');
  await page.click('#submit');
  const secondResp = await again;
  const second = (await secondResp.json()).job;
  const secondKey = secondResp.request().headers()['idempotency-key'];
  check('second_submit_new_key', secondResp.status() === 202 && secondKey
        && secondKey !== submitReq.headers()['idempotency-key'], { status: secondResp.status() });
  await page.waitForFunction((id) => document.getElementById('job-id').textContent.includes(id)
                             && ['queued', 'running'].includes(document.getElementById('job-panel').dataset.status),
                             second.id, { timeout: 10000 });
  // Cancel it while it runs: the page shows "Cancelling…" until ComfyUI confirms the interrupt.
  await page.waitForFunction(() => document.getElementById('job-panel').dataset.status === 'running'
                             && Number(document.getElementById('progress-bar').dataset.percent) > 0,
                             null, { timeout: 20000 });
  const cancelled = page.waitForResponse((r) => new URL(r.url()).pathname === `/v1/jobs/${second.id}/cancel`);
  await page.click('#cancel');
  const cancelResp = await cancelled;
  await page.waitForFunction(() => document.getElementById('job-panel').dataset.status === 'cancelled',
                             null, { timeout: 30000 });
  await page.waitForSelector(`#jobs li[data-job-id="${second.id}"][data-status="cancelled"]`, { timeout: 10000 });
  check('cancelled', cancelResp.status() === 202
        && (await page.textContent('#job-status')) === 'cancelled'
        && (await page.isHidden('#cancel')), { cancel_status: cancelResp.status() });
  await shoot(page, '04-cancelled.png');

  // ---- img2img: the image input is uploaded through the presigned form first (then cancelled)
  await page.selectOption('#workflow', 'img2img');
  await page.waitForSelector('#fields input[type=file][data-input="image"]');
  await page.fill('[data-param="prompt"]', 'the same, redrawn');
  await page.setInputFiles('[data-input="image"]', { name: 'input.png', mimeType: 'image/png',
                                                     buffer: await page.screenshot() });
  const uploadForm = page.waitForResponse((r) => new URL(r.url()).pathname === '/v1/uploads');
  const img2img = page.waitForResponse((r) => new URL(r.url()).pathname === '/v1/jobs'
                                       && r.request().method() === 'POST');
  await page.click('#submit');
  const [formResp, thirdResp] = [await uploadForm, await img2img];
  const third = await thirdResp.json();
  check('img2img_upload', formResp.status() === 201 && thirdResp.status() === 202
        && Boolean(JSON.parse(thirdResp.request().postData()).inputs?.image),
        { upload: formResp.status(), submit: thirdResp.status(), body: third.error || null });
  if (third.job) {
    await page.waitForFunction((id) => document.getElementById('job-id').textContent.includes(id), third.job.id);
    await page.click('#cancel');
    await page.waitForSelector(`#jobs li[data-job-id="${third.job.id}"][data-status="cancelled"]`,
                               { timeout: 30000 });
  }

  // ---- my jobs
  await page.waitForSelector(`#jobs li[data-job-id="${firstJobId}"][data-status="succeeded"]`, { timeout: 10000 });
  const listed = await page.$$eval('#jobs li', (items) => items.map((li) => [li.dataset.jobId, li.dataset.status]));
  check('my_jobs', listed.length === 3 && listed[0][0] === third.job?.id && listed[1][0] === second.id
        && listed[2][0] === firstJobId, listed);

  // Back to the first job from the list: its image is shown again, sharp.
  await page.click(`#jobs li[data-job-id="${firstJobId}"]`);
  await page.waitForFunction((id) => document.getElementById('job-id').textContent.includes(id)
                             && document.getElementById('result').naturalWidth > 0
                             && getComputedStyle(document.getElementById('result')).opacity === '1',
                             firstJobId, { timeout: 10000 });
  check('reopen_from_list', true);

  // The page on a phone-sized screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => document.getElementById('job-panel').scrollIntoView());
  await sleep(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check('fits_a_phone', overflow <= 0, { horizontal_overflow_px: overflow });
  await shoot(page, '05-phone.png', false);
}

const browser = await chromium.launch({ executablePath: opts.chromium });
const pageErrors = [];
let crashed = null;
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 860 }, locale: 'en-US',
                                             timezoneId: 'UTC' });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => {
    // A failed fetch (the injected 503/429) is logged by chromium as a resource error: not a page error.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text());
  });
  try {
    await run(page);
  } catch (e) {
    crashed = String(e && e.stack || e);
    try { await shoot(page, '99-failure.png'); } catch (_) { /* the page may be gone */ }
  }
  check('no_page_errors', pageErrors.length === 0, pageErrors);
} finally {
  await browser.close();
}
if (crashed) check('script_completed', false, crashed);
const ok = Object.values(checks).every((c) => c.ok);
const report = { ok, checks, screenshots, polls };
writeFileSync(path.join(opts.out, 'report.json'), JSON.stringify(report, null, 2));
console.log(JSON.stringify(report));
process.exit(ok ? 0 : 1);
