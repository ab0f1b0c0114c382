// A real OpenID Connect provider for the hub's integration test: the certified
// `oidc-provider` package (npm), run by Node.js on a test-bed host. Any login
// name is accepted (the package's development interactions); the account's
// claims are derived from it. Settings come from the environment.
import fs from "node:fs";
import https from "node:https";
import Provider from "oidc-provider";

const env = process.env;
const provider = new Provider(env.OIDC_ISSUER, {
  clients: [
    {
      client_id: env.OIDC_CLIENT_ID,
      client_secret: env.OIDC_CLIENT_SECRET,
      redirect_uris: [env.OIDC_REDIRECT_URI],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_post",
    },
  ],
  claims: { openid: ["sub"], profile: ["preferred_username", "name"], email: ["email", "email_verified"] },
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => false },
  cookies: { keys: [env.OIDC_CLIENT_SECRET] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, email: `${id}@example.org`, email_verified: true };
      },
    };
  },
});
provider.proxy = false;
provider.on("server_error", (ctx, err) => console.error("server_error", err));
const server = https.createServer(
  { cert: fs.readFileSync(env.OIDC_TLS_CERT), key: fs.readFileSync(env.OIDC_TLS_KEY) },
  provider.callback(),
);
server.listen(Number(env.OIDC_PORT), env.OIDC_HOST, () => console.log(`oidc-provider on ${env.OIDC_ISSUER}`));
