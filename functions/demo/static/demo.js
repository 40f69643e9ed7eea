/* comfy-gateway demo page, the start: the login (kept in localStorage) and the wiring of the
 * page's controls. The last of its four scripts (see api.js).
 */
(() => {
  'use strict';

  const D = window.Demo;
  const { $, state, call, retryAfterMs, errorText, seconds } = D;
  const { stopWatching, cancelJob, refreshJobs, renderJobs, loadWorkflows, selectWorkflow, onSubmit } = D;
  const STORE_KEY = 'comfy-gateway-demo';

  // ------------------------------------------------------------------ login

  function saveLogin(answer, name) {
    localStorage.setItem(STORE_KEY, JSON.stringify({ token: answer.token, expires_at: answer.expires_at,
                                                     user: answer.user, name }));
  }

  function loadLogin() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORE_KEY) || 'null');
      if (saved && saved.token && Date.parse(saved.expires_at) > Date.now()) return saved;
    } catch (_) { /* a broken entry: log in again */ }
    return null;
  }

  function showLogin(message) {
    stopWatching();
    clearTimeout(state.jobsTimer);
    clearTimeout(state.workflowsTimer);
    state.token = null;
    $('app').hidden = true;
    $('who').hidden = true;
    $('login-panel').hidden = false;
    $('login-error').textContent = message || '';
    $('login-user').focus();
  }

  function expired() {
    localStorage.removeItem(STORE_KEY);
    showLogin('Your session expired: log in again.');
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const name = $('login-user').value.trim();
    if (!name) { $('login-error').textContent = 'Enter a name.'; return; }
    $('login-button').disabled = true;
    $('login-error').textContent = '';
    try {
      const r = await call('POST', '/v1/auth/dev', { body: { user: name } }, { retryOn: [503], what: 'Login' });
      if (r.status !== 200) {
        const wait = r.status === 429 ? ` Try again in ${seconds(retryAfterMs(r.headers, 1))}.` : '';
        $('login-error').textContent = errorText(r) + wait;
        return;
      }
      saveLogin(r.data, name);
      enterApp(r.data, name);
    } catch (e) {
      $('login-error').textContent = e.message;
    } finally {
      $('login-button').disabled = false;
    }
  }

  function enterApp(login, name) {
    state.token = login.token;
    state.user = login.user;
    $('who-name').textContent = `${name} · ${login.user.id.slice(0, 8)}`;
    $('who').hidden = false;
    $('login-panel').hidden = true;
    $('app').hidden = false;
    loadWorkflows();
    refreshJobs();
  }

  function logout() {
    localStorage.removeItem(STORE_KEY);
    state.jobs = [];
    renderJobs();
    $('job-panel').hidden = true;
    showLogin('');
  }
  D.expired = expired;

  // ------------------------------------------------------------------ start

  function start() {
    $('login-form').addEventListener('submit', onLogin);
    $('logout').addEventListener('click', logout);
    $('workflow').addEventListener('change', (ev) => selectWorkflow(ev.target.value));
    $('job-form').addEventListener('submit', onSubmit);
    $('cancel').addEventListener('click', () => state.watch && cancelJob(state.watch.id));
    $('refresh-jobs').addEventListener('click', () => refreshJobs());
    $('more-jobs').addEventListener('click', () => refreshJobs({ more: true }));
    const saved = loadLogin();
    if (saved) {
      enterApp(saved, saved.name || '');
    } else {
      showLogin('');
    }
  }

  start();
})();
