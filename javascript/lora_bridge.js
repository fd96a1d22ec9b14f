// LoRA Bridge: client-side helpers of the LoRA Training tab.
// In the WebUI this file is injected as a <script> into the page head; the standalone app adds it itself.

function loraBridgeLoraTag(name, weight) {
    var w = Number(weight);
    return "<lora:" + String(name || "").trim() + ":" + (isFinite(w) ? w : 0.7) + ">";
}

function loraBridgeRoot() {
    return typeof gradioApp === "function" ? gradioApp() : document;
}

// Put <lora:name:w> into the txt2img prompt (WebUI) or copy it to the clipboard (standalone).
// Returns the inputs unchanged so the Python side can show the tag in the tab's own prompt box.
function loraBridgeSendToTxt2img(name, weight) {
    if (!String(name || "").trim()) {
        return [name, weight];
    }
    var tag = loraBridgeLoraTag(name, weight);
    var prompt = loraBridgeRoot().querySelector("#txt2img_prompt textarea");
    if (prompt) {
        var text = prompt.value.trim();
        if (text.indexOf(tag) < 0) {
            prompt.value = text ? text + " " + tag : tag;
            if (typeof updateInput === "function") {
                updateInput(prompt);
            } else {
                prompt.dispatchEvent(new Event("input", {bubbles: true}));
            }
        }
        if (typeof switch_to_txt2img === "function") {
            switch_to_txt2img();
        }
    } else if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(tag).catch(function() {});
    }
    return [name, weight];
}

// Re-render the Lora cards of txt2img and img2img (A1111 1.10's hidden refresh buttons).
function loraBridgeRefreshCards() {
    ["txt2img", "img2img"].forEach(function(tab) {
        var button = loraBridgeRoot().querySelector("#" + tab + "_lora_extra_refresh_internal");
        if (button) {
            button.dispatchEvent(new Event("click"));
        }
    });
}

// The live displays refresh once a second while the tab is on screen (a hidden browser tab or
// another WebUI tab sends nothing). They are fetched from the extension's own route (extension/ui/live.py),
// which goes through no gradio event and so writes nothing to the WebUI's log; the hidden poll button (a
// gradio event) is clicked only when the samples or the result boxes have something new, or on every tick
// when the route is not there or refuses this page.
var loraBridgeLive = {mode: "route", ticks: null, busy: false};

function loraBridgeShown() {
    var root = loraBridgeRoot();
    if (!root.querySelector("#lora_bridge_poll") || document.visibilityState !== "visible") {
        return false;
    }
    var tab = root.querySelector("#tab_lora_training");  // the WebUI's tab; absent standalone
    return !(tab && tab.offsetParent === null);
}

function loraBridgeClickPoll() {
    var button = loraBridgeRoot().querySelector("#lora_bridge_poll");
    if (button) {
        button.click();
    }
}

function loraBridgeLiveUrl() {
    var seen = loraBridgeLive.ticks ? "?seen=" + encodeURIComponent(loraBridgeLive.ticks[0]) : "";
    return window.location.pathname.replace(/[^\/]*$/, "") + "lora-bridge/tab/live" + seen;
}

// Write one answer of the route into the displays; click the poll button when a gradio-side part changed.
function loraBridgeApplyLive(data) {
    var root = loraBridgeRoot();
    var last = loraBridgeLive.ticks;
    var ticks = data.ticks;
    if (!last || last[0] !== ticks[0]) {
        Object.keys(data.view).forEach(function(key) {
            root.querySelectorAll('[data-live="' + key + '"]').forEach(function(el) {
                if (el.innerHTML !== data.view[key]) {
                    el.innerHTML = data.view[key];
                }
            });
        });
    }
    loraBridgeLive.ticks = ticks;
    if (!last || last[1] !== ticks[1] || last[2] !== ticks[2]) {
        loraBridgeClickPoll();
    }
}

function loraBridgePollTick() {
    if (!loraBridgeShown() || loraBridgeLive.busy) {
        return;
    }
    if (loraBridgeLive.mode !== "route" || !window.fetch) {
        loraBridgeClickPoll();
        return;
    }
    loraBridgeLive.busy = true;
    fetch(loraBridgeLiveUrl(), {credentials: "same-origin", cache: "no-store"})
        .then(function(response) {
            if (!response.ok) {  // no route here, or it refuses this page: gradio events from now on
                loraBridgeLive.mode = "button";
                loraBridgeClickPoll();
                return;
            }
            return response.json().then(loraBridgeApplyLive);
        })
        .catch(function() {})  // the server is away (restarting): try again next second
        .then(function() {
            loraBridgeLive.busy = false;
        });
}

if (!window.loraBridgePollTimer) {
    window.loraBridgePollTimer = setInterval(loraBridgePollTick, 1000);
}

window.loraBridgeLoraTag = loraBridgeLoraTag;
window.loraBridgeSendToTxt2img = loraBridgeSendToTxt2img;
window.loraBridgeRefreshCards = loraBridgeRefreshCards;
