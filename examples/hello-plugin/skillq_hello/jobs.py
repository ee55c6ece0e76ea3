"""Two job types, one described by its type hints, one by a pydantic model."""

import pydantic

import skillq


@skillq.job_type(queue="default", time_limit=30, max_retries=0)
def greet(name: str, times: int = 1) -> dict:
    """Greet someone, `times` times."""
    for done in range(1, times + 1):
        skillq.report_progress(done / times, f"greeted {done} of {times}")
    return {"greeting": " ".join([f"hello {name}"] * times)}


class Order(pydantic.BaseModel):
    item: str = pydantic.Field(min_length=1)
    quantity: int = pydantic.Field(ge=1, le=100)


class Receipt(pydantic.BaseModel):
    item: str
    quantity: int
    total_cents: int


@skillq.job_type(name="price-order", params_schema=Order, run_once=True)
def price_order(order: Order) -> Receipt:
    """Price an order at 250 cents an item (a stand-in for a real price list)."""
    return Receipt(item=order.item, quantity=order.quantity, total_cents=250 * order.quantity)
