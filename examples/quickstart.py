"""The README's example: a three-step workflow that survives a crash at any step.

Run it twice: `python examples/quickstart.py`. The second run finds the finished workflow by
its id and prints the recorded result without running any step again.
"""

import perdure


@perdure.step
def fetch_order(order_id: str) -> dict[str, int]:
    print(f"fetching {order_id}")
    return {"amount": 42}


@perdure.step
def charge_card(amount: int) -> str:
    print(f"charging {amount}")  # a side effect: runs once, even across crashes
    return f"receipt-{amount}"


@perdure.workflow
def checkout(order_id: str) -> str:
    order = fetch_order(order_id)
    receipt = charge_card(order["amount"])
    return f"{order_id}: {receipt} at {perdure.now():%H:%M}"


if __name__ == "__main__":
    with perdure.Engine("sqlite:///quickstart.db") as engine:
        print(engine.run(checkout, "order-1", id="checkout-order-1"))
