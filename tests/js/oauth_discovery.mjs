// The TypeScript MCP SDK's own OAuth client against a skillq in `oidc` mode:
// node oauth_discovery.mjs <mcp url> <http|sse>
// It connects with no token, follows the 401 to the protected resource metadata, the
// provider's metadata and registration, "redirects" (the URL is recorded: the test plays
// the user), exchanges the code, connects again and calls list_jobs. Prints one JSON line.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, kind] = process.argv.slice(2);
const callback = "http://127.0.0.1:1/callback";
const state = { redirect: null, client: undefined, tokens: undefined, verifier: undefined };
const provider = {
  get redirectUrl() { return callback; },
  get clientMetadata() {
    return {
      client_name: "skillq ts test",
      redirect_uris: [callback],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  },
  clientInformation() { return state.client; },
  saveClientInformation(info) { state.client = info; },
  tokens() { return state.tokens; },
  saveTokens(tokens) { state.tokens = tokens; },
  redirectToAuthorization(authorizationUrl) { state.redirect = authorizationUrl.toString(); },
  saveCodeVerifier(verifier) { state.verifier = verifier; },
  codeVerifier() { return state.verifier; },
};
const transport = () => kind === "sse"
  ? new SSEClientTransport(new URL(url), { authProvider: provider })
  : new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });

const first = transport();
try {
  await new Client({ name: "skillq-ts", version: "0" }).connect(first);
  console.log(JSON.stringify({ error: "connected without a token" }));
  process.exit(1);
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
}
await first.finishAuth("the-code");
const client = new Client({ name: "skillq-ts", version: "0" });
await client.connect(transport());
const result = await client.callTool({ name: "list_jobs", arguments: {} });
await client.close();
console.log(JSON.stringify({ redirect: state.redirect, result }));
