// The example host's pages. They call only their own backend (/example/api/), which adds the
// mplink API token server-side. Text from the server is always set with textContent, never
// parsed as HTML.
"use strict";
var mplinkExample = (function () {
  var api = "api/";

  function param(name) {
    return new URLSearchParams(window.location.search).get(name);
  }

  function $(id) {
    return document.getElementById(id);
  }

  function showError(message) {
    var box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
  }

  // fetch + JSON; a non-2xx answer becomes an Error carrying the API's {code, message}.
  function call(method, path, body) {
    var init = { method: method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(api + path, init).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!resp.ok) {
          var err = new Error((data && data.message) || ("HTTP " + resp.status));
          err.code = data && data.code;
          throw err;
        }
        return data;
      });
    });
  }

  // aws-landing.html?token=T[&offer_type=free-trial]: posts the form as AWS Marketplace does.
  function landing() {
    var token = param("token");
    if (!token) {
      $("status").textContent = "No token in the address (aws-landing.html?token=…).";
      return;
    }
    $("token").value = token;
    var offer = param("offer_type");
    if (offer) {
      $("offer-type").value = offer;
      $("offer-type").disabled = false;
    }
    $("register").submit();
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text || "";
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  // select.html?registration=ID: the signed-in user's organizations, each with a Link button;
  // a button mplink says is not linkable is disabled and its tooltip says why.
  function select() {
    var registration = param("registration");
    if (!registration) {
      showError("No registration in the address: start again from AWS Marketplace.");
      return;
    }
    var path = "registrations/" + encodeURIComponent(registration) + "/organizations";
    call("GET", path).then(function (data) {
      var reg = data.registration;
      $("registration-summary").textContent =
        "Product " + reg.product_code + ", AWS account " + (reg.customer_aws_account_id || "—") +
        (reg.expired ? " (this registration has expired)" : "");
      var body = $("organizations").tBodies[0];
      body.textContent = "";
      data.organizations.forEach(function (org) {
        var row = document.createElement("tr");
        row.id = "org-" + org.org_id;
        row.dataset.orgId = org.org_id;
        cell(row, org.name, "name");
        cell(row, org.billing_today, "billing-today");
        var action = cell(row, "");
        var button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        button.textContent = "Link";
        if (org.linkable) {
          button.addEventListener("click", function () { link(registration, org.org_id, button); });
        } else {
          button.disabled = true;
          button.title = org.reason_text;
          button.dataset.reason = org.reason;
        }
        action.appendChild(button);
        var why = cell(row, org.linkable ? "" : org.reason_text, "reason");
        if (!org.linkable) {
          // Screen readers get the reason too (a tooltip alone is not announced everywhere).
          why.id = "reason-" + org.org_id;
          button.setAttribute("aria-describedby", why.id);
        }
        body.appendChild(row);
      });
    }).catch(function (e) { showError(e.message); });
  }

  function link(registration, orgId, button) {
    button.disabled = true;
    clearError();
    var path = "registrations/" + encodeURIComponent(registration) + "/link";
    call("POST", path, { org_id: orgId }).then(function () {
      window.location.href = "billing.html?org=" + encodeURIComponent(orgId);
    }).catch(function (e) {
      button.disabled = false;
      showError(e.message);
    });
  }

  function renderBilling(data) {
    var b = data.billing;
    document.title = "Billing — " + data.name;
    $("org-name").textContent = "Billing — " + data.name;
    $("payment-method").textContent = b.payment_method_text || "No payment method";
    $("payment-method").dataset.method = b.payment_method || "";
    $("link-state").textContent = b.link_state ? "link: " + b.link_state.replace("_", " ") : "";
    $("link-state").dataset.state = b.link_state || "";
    var edit = $("edit-payment");
    edit.disabled = !b.edit_enabled;
    edit.title = b.edit_enabled ? "" : "Paid through AWS Marketplace: manage it in your AWS account.";
    var sync = $("sync-notice");
    var notice = $("notice");
    if (b.syncing) {
      sync.textContent = b.notice || "Your AWS Marketplace subscription is being synced…";
      sync.hidden = false;
      notice.hidden = true;
    } else {
      sync.hidden = true;
      notice.textContent = b.notice || "";
      notice.hidden = !b.notice;
    }
    renderUsage(data.usage || []);
    var list = $("resources");
    list.textContent = "";
    data.resources.forEach(function (r) {
      var li = document.createElement("li");
      li.textContent = r.kind + " " + r.name + " (" + r.status + ")";
      li.dataset.name = r.name;
      list.appendChild(li);
    });
  }

  // What AWS Marketplace made of each hour, in the buyer's words.
  var FATES = {
    open: "this hour is still open",
    pending: "being sent to AWS",
    sent: "billed by AWS",
    duplicate: "not billed (AWS had this hour)",
    not_subscribed: "not billed (not subscribed)",
    expired: "not billed (too late)",
    stopped: "not billed (subscription ended)",
    failed: "not sent yet (retrying)"
  };

  function renderUsage(hours) {
    var body = $("usage").querySelector("tbody");
    body.textContent = "";
    $("usage-empty").hidden = hours.length > 0;
    hours.forEach(function (h) {
      var row = document.createElement("tr");
      row.dataset.hour = h.usage_hour;
      row.dataset.dimension = h.dimension;
      var tags = h.allocations.filter(function (a) {
        return Object.keys(a.tags).length > 0;
      }).map(function (a) {
        return Object.keys(a.tags).map(function (k) { return k + "=" + a.tags[k]; }).join(" ") + ": " + a.quantity;
      }).join("; ");
      cell(row, h.usage_hour.slice(0, 16).replace("T", " "), "hour");
      cell(row, h.dimension, "dimension");
      cell(row, String(h.quantity), "quantity");
      cell(row, tags, "tags");
      cell(row, FATES[h.record.fate] || h.record.fate, "fate");
      body.appendChild(row);
    });
  }

  // billing.html?org=ID: polls the billing view every second.
  function billing() {
    var org = param("org");
    if (!org) {
      showError("No organization in the address.");
      return;
    }
    $("edit-payment").addEventListener("click", function () {
      $("edit-message").hidden = false;
    });
    var path = "organizations/" + encodeURIComponent(org) + "/billing";
    function poll() {
      call("GET", path).then(function (data) {
        clearError();
        renderBilling(data);
      }).catch(function (e) {
        showError(e.message);
      }).then(function () {
        window.setTimeout(poll, 1000);
      });
    }
    poll();
  }

  var pages = { landing: landing, select: select, billing: billing };
  var page = pages[document.body.dataset.page];
  if (page) page();
  return pages;
})();
