// One client for the whole app. utils/gateway.js is a copy of clients/miniprogram/index.js:
//   cp clients/miniprogram/index.js clients/miniprogram/example/utils/gateway.js
const { createClient } = require('./utils/gateway.js');
const config = require('./config.js');

App({
  onLaunch() {
    this.gateway = createClient({ baseUrl: config.baseUrl, wx });
    // With wx.login nothing is needed here: the first call logs in and the token is kept in storage.
    // A dev login must be asked for once; a stored session is renewed the same way later.
    this.ready = config.devUser && !this.gateway.user() ? this.gateway.devLogin(config.devUser) : Promise.resolve();
    this.ready.catch(() => {}); // the page shows the error when it awaits ready
  },
});
