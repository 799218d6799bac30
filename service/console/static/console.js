// The console's shell: sign-in, the pages this key may open (from GET /v1/me), the #page router.
import { ApiError, call, session } from "./api.js";
import { $, problem, say } from "./dom.js";
import { operatorPages } from "./operator.js";
import { tenantPages } from "./tenant.js";
import { trainingPages } from "./training.js";

const pages = { ...tenantPages, ...trainingPages, ...operatorPages };
let identity = null;

// What a page needs (data-needs) against the key: "tenant" any key, "admin" an admin key,
// another scope that scope (admin keys have every scope).
function may(needs) {
  if (!identity) return false;
  if (needs === "tenant") return true;
  return identity.admin || identity.scopes.includes(needs);
}

function allowedPages() {
  return [...document.querySelectorAll("#nav li")]
    .filter((item) => may(item.dataset.needs))
    .map((item) => item.querySelector("a").hash.slice(1));
}

async function route() {
  const allowed = allowedPages();
  const wanted = location.hash.slice(1);
  if (!identity) return;
  const shown = document.querySelector("[data-page]:not([hidden])");
  if (wanted && !Object.hasOwn(pages, wanted) && shown) return;  // not a page (the skip link's #main): stay
  const page = allowed.includes(wanted) ? wanted : allowed[0];
  if (Object.hasOwn(pages, wanted) && wanted !== page) say(`This key may not open ${wanted}.`);
  for (const section of document.querySelectorAll("[data-page]")) section.hidden = section.id !== page;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.hash === `#${page}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  problem("");
  try {
    await pages[page].show(identity);
  } catch (error) {
    failed(error);
  }
}

export function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    signOut(`Signed out: ${error.message}.`);
    return;
  }
  problem(error instanceof ApiError ? `${error.status}: ${error.message}` : String(error));
}

function showSignedIn() {
  $("#sign-in").hidden = !!identity;
  $("#nav").hidden = !identity;
  $("#sign-out").hidden = !identity;
  $("#identity").hidden = !identity;
  for (const item of document.querySelectorAll("[data-needs]")) item.hidden = !may(item.dataset.needs);
  if (identity) {
    const role = identity.admin ? "admin" : identity.scopes.join(", ");
    $("#identity").textContent = `Tenant ${identity.tenant} · key ${identity.key_id} · ${role}`;
  } else {
    for (const section of document.querySelectorAll("[data-page]")) section.hidden = true;
  }
}

async function signIn(key) {
  session.keep(key);
  try {
    identity = await call("/v1/me");
  } catch (error) {
    session.forget();
    identity = null;
    showSignedIn();
    problem(error instanceof ApiError ? `Sign-in failed: ${error.message}` : String(error));
    return false;
  }
  problem("");
  showSignedIn();
  say(`Signed in as tenant ${identity.tenant}.`);
  await route();
  return true;
}

function signOut(message) {
  session.forget();
  identity = null;
  showSignedIn();
  say(message || "Signed out.");
  $("#api-key").value = "";
  $("#api-key").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    $("#api-key").value = "";
    if (await signIn(key)) $("#main").focus();
  });
  $("#sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  for (const page of Object.values(pages)) page.setUp?.(failed);
  if (session.key) signIn(session.key);
  else showSignedIn();
});
