"""POST /v1/uploads: a presigned form the app posts an input image to (wx.uploadFile)."""

from shared.auth import authenticate
from shared.limits import limit_user
from shared.http import json_response, lambda_handler
from shared.uploads import create_upload


def new_upload(ctx, req):
    user_id = authenticate(ctx, req)
    limit_user(ctx, user_id)
    return json_response(201, {"upload": create_upload(ctx, user_id, req.json())})


handler = lambda_handler(new_upload)
