// Where the gateway is. In the developer tools with "do not verify domain names" (urlCheck: false in
// project.config.json) a local `bash scripts/dev.sh --fake-comfyui` works as is. On a phone the API must
// be HTTPS on a domain filed in the mini-program's settings (see clients/miniprogram/README.md).
module.exports = {
  baseUrl: 'http://127.0.0.1:8000',
  // A name for POST /v1/auth/dev (the gateway must run with DEV_LOGIN=1, as `gateway dev` does).
  // Set to '' to log in with wx.login (POST /v1/auth/wechat; needs WECHAT_APPID/WECHAT_SECRET).
  devUser: 'demo',
};
