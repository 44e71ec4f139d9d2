// The portal's card form: Stripe Elements collects the card in Stripe's own frame (the
// number never touches this server), confirms the SetupIntent, then the form posts the
// SetupIntent's id so the server saves the card it now holds.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("card-form");
  if (!form || typeof Stripe === "undefined") {
    return;
  }
  const stripe = Stripe(form.dataset.publishableKey);
  const card = stripe.elements().create("card");
  card.mount("#card-element");
  const error = document.getElementById("card-error");
  let confirmed = false;
  form.addEventListener("submit", async (event) => {
    if (confirmed) {
      return;  // the second submit, after confirmation: let the browser post it
    }
    event.preventDefault();
    error.hidden = true;
    const result = await stripe.confirmCardSetup(form.dataset.clientSecret, {
      payment_method: { card: card },
    });
    if (result.error) {
      error.textContent = result.error.message || "The card was refused.";
      error.hidden = false;
      return;
    }
    confirmed = true;
    form.submit();
  });
});
